"""The Helm chart charts/fieldgate: lint, render (default values and a production-like values
file), validate every object against the Kubernetes API schemas, and check what a reviewer
checks by eye: probes that point at what the processes serve, non-root containers, grace periods
above the drain timeout, selectors that select, the configuration valid for the real model, the
token signing key mounted where the configuration says."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fieldgate import config as cfg
from fieldgate.cloud.composition import SERVICES
from fieldgate.cloud.config import CloudConfig
from tests.deploy import manifests as mf

# SERVICES is the one list of the cloud's services (`fieldgate cloud run <service>`). The chart's
# own list is the keys of values.yaml's `services`; these tests fail when the two differ.
# The services behind a Kubernetes Service; every other one is a consumer stage.
FRONTED = ("ingest", "api")
CONSUMER_STAGES = tuple(s for s in SERVICES if s not in FRONTED)
# The health contract of the cloud processes (cloud.yaml health: {port: 8081}; the api also on
# its REST port). ingest's readiness is the gRPC health protocol on its gRPC port.
HEALTH_PATHS = {"/healthz", "/readyz"}


def served(conf: CloudConfig) -> dict[int, set[str]]:
    assert conf.health.port is not None
    return {conf.health.port: HEALTH_PATHS, conf.rest_port: HEALTH_PATHS}


def cloud_yaml(manifests: list[mf.Manifest]) -> str:
    (cm,) = mf.of_kind(manifests, "ConfigMap")
    text: str = cm["data"]["cloud.yaml"]
    return text


def cloud_config(manifests: list[mf.Manifest]) -> CloudConfig:
    return cfg.validate(CloudConfig, yaml.safe_load(cloud_yaml(manifests)), "ConfigMap cloud.yaml")


def deployment(manifests: list[mf.Manifest], service: str) -> mf.Manifest:
    return mf.one(manifests, "Deployment", f"fg-fieldgate-{service}")


def container(manifests: list[mf.Manifest], service: str) -> mf.Manifest:
    containers: list[mf.Manifest] = mf.pod_spec(deployment(manifests, service))["containers"]
    (c,) = containers
    return c


@pytest.fixture(params=["default", "production"])
def rendered(request: pytest.FixtureRequest) -> list[mf.Manifest]:
    fixture = "chart_default" if request.param == "default" else "chart_production"
    manifests: list[mf.Manifest] = request.getfixturevalue(fixture)
    return manifests


def test_helm_lint_strict(helm: Path) -> None:
    for extra in ([], ["--values", str(mf.HERE / "values-existing-clusters.yaml")]):
        proc = mf.run([helm, "lint", "--strict", mf.CHART, *extra])
        assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


def test_every_object_is_valid_for_the_kubernetes_versions(rendered: list[mf.Manifest]) -> None:
    assert mf.schema_problems(rendered) == []


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["services.ingest.replicas=-1"], "at '/services/ingest/replicas': minimum: got -1, want 0"),
        (
            ["services.inbound.replica=3"],
            "at '/services/inbound': additional properties 'replica' not allowed",
        ),
        (["config.kafka.bootstrap="], "at '/config/kafka/bootstrap': minLength"),
        (["config.cassandra.keyspacePrefix=Prod_1"], "at '/config/cassandra/keyspacePrefix'"),
        (["config.drainTimeoutSeconds=0"], "at '/config/drainTimeoutSeconds'"),
        (["services.api.pdb.maxUnavailable=0"], "at '/services/api/pdb/maxUnavailable'"),
        (
            ["services.api.terminationGracePeriodSeconds=20"],
            "services.api.terminationGracePeriodSeconds (20) must be above preStopSleepSeconds + "
            "config.drainTimeoutSeconds (25 s)",
        ),
        (
            ["services.inbound.autoscaling.enabled=true", "services.inbound.autoscaling.maxReplicas=1"],
            "services.inbound.autoscaling.maxReplicas (1) is below minReplicas (2)",
        ),
        (
            ["services.api.autoscaling.enabled=true", "services.api.resources.requests=null"],
            "services.api.autoscaling needs services.api.resources.requests.cpu",
        ),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_value(helm: Path, sets: list[str], message: str) -> None:
    argv: list[str | Path] = [helm, "template", "fg", mf.CHART]
    for s in sets:
        argv += ["--set", s]
    proc = mf.run(argv, check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((mf.CHART / "values.yaml").read_text())
    return values


def chart_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((mf.CHART / "values.schema.json").read_text())
    return schema


def test_the_chart_lists_exactly_the_services_of_the_code() -> None:
    assert set(FRONTED) <= set(SERVICES)
    assert sorted(chart_values()["services"]) == sorted(SERVICES)
    services = chart_schema()["properties"]["services"]
    # Every service required, no other allowed: a values file cannot drop one or add a typo.
    assert sorted(services["required"]) == sorted(SERVICES)
    assert sorted(services["properties"]) == sorted(SERVICES)
    assert services["additionalProperties"] is False


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["services.state=null"], "at '/services': missing property 'state'"),
        (["services.alerts.replicas=1"], "at '/services': additional properties 'alerts' not allowed"),
    ],
)
def test_values_cannot_drop_or_invent_a_service(helm: Path, sets: list[str], message: str) -> None:
    argv: list[str | Path] = [helm, "template", "fg", mf.CHART]
    for s in sets:
        argv += ["--set", s]
    proc = mf.run(argv, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_one_deployment_per_service_running_that_service(rendered: list[mf.Manifest]) -> None:
    names = {d["metadata"]["name"] for d in mf.of_kind(rendered, "Deployment")}
    assert names == {f"fg-fieldgate-{s}" for s in SERVICES}
    for service in SERVICES:
        c = container(rendered, service)
        assert c["args"] == ["cloud", "run", "--config", "/etc/fieldgate/cloud.yaml", service]
        assert mf.mounted_file(
            deployment(rendered, service), c["name"], "/etc/fieldgate/cloud.yaml", rendered
        )


def test_replicas_and_autoscalers(
    chart_default: list[mf.Manifest], chart_production: list[mf.Manifest]
) -> None:
    defaults = chart_values()["services"]
    for s in SERVICES:
        assert deployment(chart_default, s)["spec"]["replicas"] == defaults[s]["replicas"] >= 1, s
    assert mf.of_kind(chart_default, "HorizontalPodAutoscaler") == []
    assert deployment(chart_production, "ingest")["spec"]["replicas"] == 3
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h
        for h in mf.of_kind(chart_production, "HorizontalPodAutoscaler")
    }
    production = yaml.safe_load((mf.HERE / "values-existing-clusters.yaml").read_text())["services"]
    autoscaled = {s for s, v in production.items() if v["autoscaling"]["enabled"]}
    assert {"inbound", "event-store", "state", "api"} <= autoscaled
    assert set(hpas) == {f"fg-fieldgate-{s}" for s in autoscaled}
    for name, hpa in hpas.items():
        target = mf.one(chart_production, "Deployment", name)
        # The HPA owns the replica count; a replicas field would fight it on every upgrade.
        assert "replicas" not in target["spec"], name
        (c,) = mf.pod_spec(target)["containers"]
        assert c["resources"]["requests"]["cpu"], f"{name}: CPU utilization needs a CPU request"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_probes_point_at_what_the_processes_serve(rendered: list[mf.Manifest]) -> None:
    conf = cloud_config(rendered)
    assert mf.probe_problems(rendered, served(conf)) == []
    ingest = container(rendered, "ingest")
    # With TLS on the gRPC port (the default) the kubelet's grpc probe cannot talk to it: the
    # health listener's /readyz gives the same answer.
    assert conf.tls is not None
    assert ingest["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    api = container(rendered, "api")
    assert api["readinessProbe"]["httpGet"]["port"] == "http"
    assert {p["name"]: p["containerPort"] for p in api["ports"]}["http"] == conf.rest_port
    for service in SERVICES:
        ports = {p["name"]: p["containerPort"] for p in container(rendered, service)["ports"]}
        assert ports["health"] == conf.health.port
        assert container(rendered, service)["livenessProbe"]["httpGet"] == {
            "path": "/healthz",
            "port": "health",
        }


def test_consumer_stages_are_probed_on_the_health_port_and_get_no_service(
    rendered: list[mf.Manifest],
) -> None:
    conf = cloud_config(rendered)
    services = mf.of_kind(rendered, "Service")
    for stage in CONSUMER_STAGES:
        c = container(rendered, stage)
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": conf.health.port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}, stage
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}, stage
        labels = mf.pod_labels(deployment(rendered, stage))
        assert not [s for s in services if mf.matches(s["spec"]["selector"], labels)], stage
        assert "lifecycle" not in c, f"{stage}: nothing routes to it, no preStop wait needed"


def test_notes_list_every_service_and_warn_about_idle_consumers(helm: Path) -> None:
    notes = mf.helm_notes(helm, sets=["config.kafka.partitions=1"])
    listed = re.findall(r"^  (\S+) +\d+ replicas?$", notes, re.MULTILINE)
    assert sorted(listed) == sorted(SERVICES)
    # Replicas beyond the partitions stand by: said for each consumer stage with 2 replicas.
    warned = set(re.findall(r"^WARNING: (\S+) may run", notes, re.MULTILINE))
    defaults = chart_values()["services"]
    assert warned == {s for s in CONSUMER_STAGES if defaults[s]["replicas"] > 1}


def test_containers_run_as_non_root_with_a_read_only_root(rendered: list[mf.Manifest]) -> None:
    assert mf.security_problems(rendered) == []
    conf = cloud_config(rendered)
    for service in SERVICES:
        d = deployment(rendered, service)
        spec = mf.pod_spec(d)
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(rendered, service)["volumeMounts"]}
        # A read-only root: data_dir and /tmp are emptyDirs.
        assert "emptyDir" in volumes[mounts[str(conf.data_dir)]], service
        assert "emptyDir" in volumes[mounts["/tmp"]], service


def test_grace_period_covers_pre_stop_and_drain(rendered: list[mf.Manifest]) -> None:
    drain = cloud_config(rendered).drain_timeout_s
    for service in SERVICES:
        d = deployment(rendered, service)
        c = container(rendered, service)
        pre_stop = c.get("lifecycle", {}).get("preStop")
        sleep = int(pre_stop["exec"]["command"][1]) if pre_stop else 0
        if service in ("api", "ingest"):
            # Behind a Service: keep serving until the endpoints are gone, then drain.
            assert pre_stop and pre_stop["exec"]["command"][0] == "sleep" and sleep > 0, service
        grace = mf.pod_spec(d)["terminationGracePeriodSeconds"]
        assert grace > sleep + drain, f"{service}: grace {grace} <= preStop {sleep} + drain {drain}"
        strategy = d["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, service


def test_cloud_configuration_is_valid_and_distributed(rendered: list[mf.Manifest]) -> None:
    conf = cloud_config(rendered)
    assert conf.bus.kind == "kafka" and conf.store.kind == "cassandra"
    assert conf.rest_host == conf.grpc_host == conf.health.host == "0.0.0.0"
    assert conf.auth.secret_file is not None and conf.auth.secret_key is None


def test_production_values_reach_the_configuration(chart_production: list[mf.Manifest]) -> None:
    conf = cloud_config(chart_production)
    assert conf.bus.bootstrap.count(":9092") == 3 and conf.bus.partitions == 12
    assert len(conf.store.hosts) == 2 and conf.store.keyspace_prefix == "prod"
    assert conf.zookeeper is not None and conf.zookeeper.instance == "prod"
    assert [t.token for t in conf.tenants] == ["default", "acme"] and not conf.tenants[1].auto_register
    assert conf.drain_timeout_s == 30
    lb = mf.one(chart_production, "Service", "fg-fieldgate-ingest")
    assert lb["spec"]["type"] == "LoadBalancer"
    # On the Deployment, where a reloader looks (not on the pods).
    api = deployment(chart_production, "api")
    assert api["metadata"]["annotations"] == {"secret.reloader.stakater.com/reload": "fieldgate-credentials"}
    assert "secret.reloader.stakater.com/reload" not in api["spec"]["template"]["metadata"]["annotations"]


def test_token_key_is_mounted_where_the_configuration_points(rendered: list[mf.Manifest]) -> None:
    conf = cloud_config(rendered)
    secret_file = str(conf.auth.secret_file)
    for service in SERVICES:
        source = mf.mounted_file(deployment(rendered, service), service, secret_file, rendered)
        assert source is not None and source[0] == "Secret", f"{service}: nothing mounted at {secret_file}"
    env = {e["name"]: e for e in container(rendered, "api")["env"]}
    ref = env["FIELDGATE_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secrets = {s["metadata"]["name"]: s for s in mf.of_kind(rendered, "Secret")}
    if secrets:  # the chart's own Secret (default values): both keys are in it
        assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["data"]
    else:  # existingSecret
        assert ref == {"name": "fieldgate-credentials", "key": "admin"}
        assert secret_file.endswith("/token-signing-key")
    for service in set(SERVICES) - {"api"}:
        assert "FIELDGATE_ADMIN_PASSWORD" not in {e["name"] for e in container(rendered, service)["env"]}


def test_each_ingest_replica_gets_its_pod_name_as_replica_id(
    rendered: list[mf.Manifest], tmp_path: Path
) -> None:
    env = {e["name"]: e for e in container(rendered, "ingest")["env"]}
    assert env["FIELDGATE_CLOUD__REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The variable really is the replica_id override, and a Deployment pod name is a valid id.
    path = tmp_path / "cloud.yaml"
    path.write_text(cloud_yaml(rendered))
    conf = cfg.load(
        CloudConfig,
        path,
        env_prefix="FIELDGATE_CLOUD",
        environ={"FIELDGATE_CLOUD__REPLICA_ID": "fg-fieldgate-ingest-7d9f8b6c4-x2x9z"},
    )
    assert conf.effective_replica_id() == "fg-fieldgate-ingest-7d9f8b6c4-x2x9z"


def test_services_and_budgets_select_existing_pods(rendered: list[mf.Manifest]) -> None:
    assert mf.selector_problems(rendered) == []
    pdbs = {p["metadata"]["name"] for p in mf.of_kind(rendered, "PodDisruptionBudget")}
    assert pdbs == {f"fg-fieldgate-{s}" for s in SERVICES}
    headless = mf.one(rendered, "Service", "fg-fieldgate-ingest-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_a_configuration_change_rolls_the_pods(helm: Path, chart_default: list[mf.Manifest]) -> None:
    def annotations(manifests: list[mf.Manifest]) -> dict[str, str]:
        result: dict[str, str] = deployment(manifests, "inbound")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return result

    before = annotations(chart_default)
    changed = annotations(mf.helm_template(helm, sets=["config.kafka.partitions=9"]))
    assert changed["checksum/config"] != before["checksum/config"]
    assert changed["checksum/secret"] == before["checksum/secret"]
    rotated = annotations(mf.helm_template(helm, sets=["auth.jwtSecret=a-new-signing-key"]))
    assert rotated["checksum/secret"] != before["checksum/secret"]
    assert rotated["checksum/config"] == before["checksum/config"]


def test_grpc_tls_is_on_by_default_and_its_files_are_mounted_for_ingest(rendered: list[mf.Manifest]) -> None:
    conf = cloud_config(rendered)
    assert conf.tls is not None and conf.tls.require_client_cert  # mutual TLS by default
    files = [conf.tls.cert_file, conf.tls.key_file, conf.tls.client_ca_file, conf.tls.crl_file]
    for path in files:
        assert path is not None
        source = mf.mounted_file(deployment(rendered, "ingest"), "ingest", str(path), rendered)
        assert source is not None and source[0] == "Secret", f"ingest: nothing mounted at {path}"


def test_without_tls_ingest_readiness_is_the_grpc_health_protocol(helm: Path) -> None:
    manifests = mf.helm_template(helm, sets=["tls.enabled=false"])
    conf = cloud_config(manifests)
    assert conf.tls is None
    ingest = container(manifests, "ingest")
    assert ingest["readinessProbe"]["grpc"] == {"port": conf.grpc_port, "service": ""}
    assert "tls" not in {v["name"] for v in mf.pod_spec(deployment(manifests, "ingest"))["volumes"]}
    assert mf.probe_problems(manifests, served(conf)) == []


def test_server_only_tls_names_no_client_ca(helm: Path) -> None:
    conf = cloud_config(mf.helm_template(helm, sets=["tls.requireClientCert=false"]))
    assert conf.tls is not None and not conf.tls.require_client_cert
    assert conf.tls.client_ca_file is None and conf.tls.crl_file is None


def grpc_ports(manifests: list[mf.Manifest]) -> dict[str, mf.Manifest]:
    return {
        s["metadata"]["name"]: next(p for p in s["spec"]["ports"] if p["name"] == "grpc")
        for s in mf.of_kind(manifests, "Service")
        if s["metadata"]["name"].startswith("fg-fieldgate-ingest")
    }


def test_ingest_services_claim_cleartext_http2_only_without_tls(
    chart_default: list[mf.Manifest], helm: Path
) -> None:
    # With TLS the port speaks TLS: kubernetes.io/h2c (HTTP/2 in the clear) would make a proxy
    # or mesh that honours appProtocol talk cleartext to it.
    ports = grpc_ports(chart_default)
    assert set(ports) == {"fg-fieldgate-ingest", "fg-fieldgate-ingest-headless"}
    assert [p.get("appProtocol") for p in ports.values()] == [None, None]
    cleartext = grpc_ports(mf.helm_template(helm, sets=["tls.enabled=false"]))
    assert [p.get("appProtocol") for p in cleartext.values()] == ["kubernetes.io/h2c"] * 2


def pem(kind: str, body: str) -> str:
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "cert": pem("CERTIFICATE", "c2VydmVyIGNlcnRpZmljYXRl"),
        "key": pem("PRIVATE KEY", "c2VydmVyIGtleQ=="),
        "ca": pem("CERTIFICATE", "ZWRnZSBDQQ=="),
        "crl": pem("X509 CRL", "cmV2b2NhdGlvbnM="),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_text(text)
    return paths


def chart_made_tls(helm: Path, files: dict[str, Path], *sets: str) -> list[mf.Manifest]:
    return mf.helm_template(
        helm,
        sets=["tls.existingSecret=", *sets],
        set_files=[f"tls.pem.{name}={path}" for name, path in files.items()],
    )


def pod_annotations(manifests: list[mf.Manifest], service: str) -> dict[str, str]:
    annotations: dict[str, str] = deployment(manifests, service)["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


def test_the_chart_can_make_the_tls_secret_from_pem_files(helm: Path, tls_files: dict[str, Path]) -> None:
    manifests = chart_made_tls(helm, tls_files)
    assert mf.schema_problems(manifests) == []
    secret = mf.one(manifests, "Secret", "fg-fieldgate-tls")
    assert secret["type"] == "kubernetes.io/tls"
    keys = {"tls.crt": "cert", "tls.key": "key", "ca.crt": "ca", "crl.pem": "crl"}
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        k: tls_files[name].read_text() for k, name in keys.items()
    }
    # Each file the configuration names is mounted from that Secret (mounted_file checks the key).
    conf = cloud_config(manifests)
    assert conf.tls is not None
    for path in (conf.tls.cert_file, conf.tls.key_file, conf.tls.client_ca_file, conf.tls.crl_file):
        source = mf.mounted_file(deployment(manifests, "ingest"), "ingest", str(path), manifests)
        assert source is not None and source[0] == "Secret" and source[1].startswith("fg-fieldgate-tls/")


def test_a_new_certificate_key_or_ca_rolls_ingest_and_a_new_crl_does_not(
    helm: Path, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    before = chart_made_tls(helm, tls_files)
    for service in SERVICES:  # only ingest reads the TLS files
        assert ("checksum/tls" in pod_annotations(before, service)) == (service == "ingest"), service
    for name in ("cert", "key", "ca", "crl"):
        rotated = dict(tls_files)
        rotated[name] = tmp_path / f"new-{name}.pem"
        rotated[name].write_text(tls_files[name].read_text().replace("\n", "\nbmV3\n", 1))
        after = chart_made_tls(helm, rotated)
        changed = {s for s in SERVICES if pod_annotations(after, s) != pod_annotations(before, s)}
        # ingest reads the certificate, key and CA once; the CRL it re-reads while it runs.
        assert changed == (set() if name == "crl" else {"ingest"}), name
    # With an existing Secret, ingest's pods carry its hash too (taken by `helm upgrade` from
    # the cluster; constant in `helm template`, which sees no cluster).
    assert "checksum/tls" in pod_annotations(mf.helm_template(helm), "ingest")


@pytest.mark.parametrize(
    ("sets", "drop", "message"),
    [
        ([], "cert", 'tls.pem.cert is empty: with tls.existingSecret "" the chart makes the TLS Secret'),
        ([], "ca", "tls.pem.ca is empty"),
        (
            [],
            "crl",
            'tls.pem.crl is empty: with tls.existingSecret "" the chart makes the TLS Secret '
            "from tls.pem (helm --set-file tls.pem.crl=<PEM file>), or set tls.crl=false",
        ),
        (["tls.pem.key=pki/server.key"], None, "tls.pem.key is not PEM text"),
    ],
)
def test_a_chart_made_tls_secret_needs_its_pem_files(
    helm: Path, tls_files: dict[str, Path], sets: list[str], drop: str | None, message: str
) -> None:
    files = {
        k: v
        for k, v in tls_files.items()
        if k != drop and not any(s.startswith(f"tls.pem.{k}=") for s in sets)
    }
    argv: list[str | Path] = [helm, "template", "fg", mf.CHART, "--set", "tls.existingSecret="]
    for s in sets:
        argv += ["--set", s]
    for name, path in files.items():
        argv += ["--set-file", f"tls.pem.{name}={path}"]
    proc = mf.run(argv, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_server_only_tls_from_the_chart_needs_no_ca(helm: Path, tls_files: dict[str, Path]) -> None:
    files = {k: tls_files[k] for k in ("cert", "key")}
    manifests = chart_made_tls(helm, files, "tls.requireClientCert=false")
    assert set(mf.one(manifests, "Secret", "fg-fieldgate-tls")["data"]) == {"tls.crt", "tls.key"}
