"""The checks of test_chart.py and test_k3s.py can fail: each is fed the rendered chart (or the
k3s base) broken in the way it is meant to catch, and must report it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fieldgate.cloud.config import CloudConfig
from fieldgate.edge.config import EdgeConfig
from tests.deploy import manifests as mf

SERVED = {8081: {"/healthz", "/readyz"}, 8080: {"/healthz", "/readyz"}}


def ingest(manifests: list[mf.Manifest]) -> mf.Manifest:
    c: mf.Manifest = mf.pod_spec(mf.one(manifests, "Deployment", "fg-fieldgate-ingest"))["containers"][0]
    return c


def no_readiness(m: list[mf.Manifest]) -> None:
    del ingest(m)["readinessProbe"]


def liveness_on_unknown_port(m: list[mf.Manifest]) -> None:
    ingest(m)["livenessProbe"]["httpGet"]["port"] = "healthz"


def liveness_on_unserved_path(m: list[mf.Manifest]) -> None:
    ingest(m)["livenessProbe"]["httpGet"]["path"] = "/health"


def grpc_probe_on_other_port(m: list[mf.Manifest]) -> None:
    ingest(m)["readinessProbe"] = {"grpc": {"port": 9090, "service": ""}}


def readiness_on_unserved_path(m: list[mf.Manifest]) -> None:
    ingest(m)["readinessProbe"]["httpGet"]["path"] = "/ready"


@pytest.mark.parametrize(
    "breakage",
    [
        no_readiness,
        liveness_on_unknown_port,
        liveness_on_unserved_path,
        grpc_probe_on_other_port,
        readiness_on_unserved_path,
    ],
)
def test_probe_check_catches(
    chart_default: list[mf.Manifest], breakage: Callable[[list[mf.Manifest]], None]
) -> None:
    assert mf.probe_problems(chart_default, SERVED) == []
    broken = mf.mutated(chart_default)
    breakage(broken)
    assert mf.probe_problems(broken, SERVED), breakage.__name__


def runs_as_root(m: list[mf.Manifest]) -> None:
    ingest(m)["securityContext"]["runAsUser"] = 0


def keeps_capabilities(m: list[mf.Manifest]) -> None:
    ingest(m)["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}


def writable_root(m: list[mf.Manifest]) -> None:
    ingest(m)["securityContext"]["readOnlyRootFilesystem"] = False


def no_seccomp(m: list[mf.Manifest]) -> None:
    del mf.pod_spec(mf.one(m, "Deployment", "fg-fieldgate-api"))["securityContext"]["seccompProfile"]


def privileged_without_escalation(m: list[mf.Manifest]) -> None:
    ingest(m)["securityContext"]["privileged"] = True


@pytest.mark.parametrize(
    "breakage", [runs_as_root, keeps_capabilities, writable_root, no_seccomp, privileged_without_escalation]
)
def test_security_check_catches(
    chart_default: list[mf.Manifest], breakage: Callable[[list[mf.Manifest]], None]
) -> None:
    broken = mf.mutated(chart_default)
    breakage(broken)
    assert mf.security_problems(broken), breakage.__name__


def test_security_check_allows_root_only_to_the_named_init_container(kustomize: Path) -> None:
    base = mf.kustomize_build(kustomize, mf.K3S / "base")
    assert mf.security_problems(base), "the chown init container runs as root: unnamed, it must be reported"
    assert mf.security_problems(base, {"buffer-dir-owner": {"CHOWN"}}) == []
    broken = mf.mutated(base)
    init = mf.pod_spec(mf.one(broken, "DaemonSet", "fieldgate-edge"))["initContainers"][0]
    init["securityContext"]["capabilities"]["add"].append("SYS_ADMIN")
    assert mf.security_problems(broken, {"buffer-dir-owner": {"CHOWN"}})


def pdb_selects_nothing(m: list[mf.Manifest]) -> None:
    mf.one(m, "PodDisruptionBudget", "fg-fieldgate-api")["spec"]["selector"]["matchLabels"][
        "app.kubernetes.io/component"
    ] = "web"


def service_targets_missing_port(m: list[mf.Manifest]) -> None:
    mf.one(m, "Service", "fg-fieldgate-ingest")["spec"]["ports"][0]["targetPort"] = "http"


def service_selects_two_workloads(m: list[mf.Manifest]) -> None:
    del mf.one(m, "Service", "fg-fieldgate-api")["spec"]["selector"]["app.kubernetes.io/component"]


@pytest.mark.parametrize(
    "breakage", [pdb_selects_nothing, service_targets_missing_port, service_selects_two_workloads]
)
def test_selector_check_catches(
    chart_default: list[mf.Manifest], breakage: Callable[[list[mf.Manifest]], None]
) -> None:
    broken = mf.mutated(chart_default)
    breakage(broken)
    assert mf.selector_problems(broken), breakage.__name__


def test_mount_check_catches_a_missing_secret_mount_or_key(chart_default: list[mf.Manifest]) -> None:
    path = "/var/run/secrets/fieldgate/jwt-secret"
    d = mf.one(chart_default, "Deployment", "fg-fieldgate-api")
    assert mf.mounted_file(d, "api", path, chart_default) is not None
    broken = mf.mutated(chart_default)
    bd = mf.one(broken, "Deployment", "fg-fieldgate-api")
    mf.pod_spec(bd)["containers"][0]["volumeMounts"] = [
        m for m in mf.pod_spec(bd)["containers"][0]["volumeMounts"] if m["name"] != "secrets"
    ]
    assert mf.mounted_file(bd, "api", path, broken) is None
    broken = mf.mutated(chart_default)
    secret = mf.of_kind(broken, "Secret")[0]
    secret["data"] = {"admin-password": secret["data"]["admin-password"]}
    assert mf.mounted_file(mf.one(broken, "Deployment", "fg-fieldgate-api"), "api", path, broken) is None


def test_config_check_catches_bad_keys_and_values(chart_default: list[mf.Manifest]) -> None:
    text = mf.of_kind(chart_default, "ConfigMap")[0]["data"]["cloud.yaml"]
    assert mf.config_problems(text, CloudConfig, "cloud.yaml") == []
    data = yaml.safe_load(text)
    data["bus"]["bootstrp"] = data["bus"].pop("bootstrap")
    (problem,) = mf.config_problems(yaml.safe_dump(data), CloudConfig, "cloud.yaml")
    assert "bus.bootstrp" in problem
    data = yaml.safe_load(text)
    data["health"]["port"] = 70000
    assert mf.config_problems(yaml.safe_dump(data), CloudConfig, "cloud.yaml")
    edge = {"metrics_port": 9100, "uplink": {"target": ""}}
    assert mf.config_problems(yaml.safe_dump(edge), EdgeConfig, "edge.yaml")


def test_schema_check_catches_unknown_fields_and_wrong_types(chart_default: list[mf.Manifest]) -> None:
    broken = mf.mutated(chart_default)
    ingest(broken)["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    mf.one(broken, "PodDisruptionBudget", "fg-fieldgate-api")["spec"]["maxUnavailable"] = [1]
    problems = mf.schema_problems(broken)
    assert any("pathh" in p for p in problems) and any("maxUnavailable" in p for p in problems)
    assert {p.split()[0] for p in problems} == set(mf.KUBERNETES_VERSIONS)
