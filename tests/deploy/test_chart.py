"""The Helm chart charts/fieldgate: lint, render (default values and a production-like values
file), validate every object against the Kubernetes API schemas, and check what a reviewer
checks by eye: probes that point at what the processes serve, non-root containers, grace periods
above the drain timeout, selectors that select, the configuration valid for the real model, the
token signing key mounted where the configuration says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fieldgate import config as cfg
from fieldgate.cloud.config import CloudConfig
from tests.deploy import manifests as mf

SERVICES = ("ingest", "inbound", "registration", "event-store", "api")
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
    (c,) = mf.pod_spec(deployment(manifests, service))["containers"]
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
    assert {s: deployment(chart_default, s)["spec"]["replicas"] for s in SERVICES} == {
        "ingest": 2,
        "inbound": 2,
        "registration": 1,
        "event-store": 2,
        "api": 2,
    }
    assert mf.of_kind(chart_default, "HorizontalPodAutoscaler") == []
    assert deployment(chart_production, "ingest")["spec"]["replicas"] == 3
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h
        for h in mf.of_kind(chart_production, "HorizontalPodAutoscaler")
    }
    assert set(hpas) == {"fg-fieldgate-inbound", "fg-fieldgate-event-store", "fg-fieldgate-api"}
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
