"""The transformation of the rendered chart for ``podman kube play`` (tests/containers/kube.py),
checked on the chart as it is now, without podman: each change podman 4.3 needs is made for
every Deployment, Secret and volume the chart renders, and nothing else. A new kind of volume,
Secret reference or port in the chart that the transformation does not handle fails here, in
the first pass, rather than as a pod that does not start in test_kube_play.py."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fieldgate.cloud.composition import SERVICES
from tests.containers.kube import COMPONENT, PROBES, Playable, for_podman
from tests.deploy import manifests as mf


def fake_pem(path: Path, kind: str) -> Path:
    path.write_text(f"-----BEGIN {kind}-----\nMIIB{kind.replace(' ', '')}\n-----END {kind}-----\n")
    return path


@pytest.fixture(scope="module")
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[mf.Manifest]:
    d = tmp_path_factory.mktemp("pem")
    files = {
        "cert": fake_pem(d / "server.pem", "CERTIFICATE"),
        "key": fake_pem(d / "server.key", "PRIVATE KEY"),
        "ca": fake_pem(d / "ca.pem", "CERTIFICATE"),
        "crl": fake_pem(d / "crl.pem", "X509 CRL"),
    }
    return mf.helm_template(
        helm,
        sets=["tls.existingSecret=", *(f"services.{s}.replicas=1" for s in SERVICES)],
        set_files=[f"tls.pem.{k}={v}" for k, v in files.items()],
        release="fgt0000",
    )


@pytest.fixture(scope="module")
def playable(rendered: list[mf.Manifest]) -> Playable:
    return for_podman(rendered, {s: 30000 + i for i, s in enumerate(SERVICES)})


def test_every_service_and_only_deployments(rendered: list[mf.Manifest], playable: Playable) -> None:
    assert sorted(playable.services) == sorted(SERVICES)
    assert {d["kind"] for d in playable.deployments} == {"Deployment"}
    assert [c["metadata"]["name"] for c in playable.configmaps] == [
        c["metadata"]["name"] for c in mf.of_kind(rendered, "ConfigMap")
    ]


def test_host_network_without_container_ports_and_numeric_probes(playable: Playable) -> None:
    assert len(set(playable.health_ports.values())) == len(SERVICES)
    for d in playable.deployments:
        service = d["spec"]["template"]["metadata"]["labels"][COMPONENT]
        spec = d["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        for c in spec["containers"]:
            assert "ports" not in c, service
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["FIELDGATE_CLOUD__HEALTH__PORT"] == str(playable.health_ports[service])
            for name in ("HEALTH__HOST", "REST_HOST", "GRPC_HOST"):
                assert env[f"FIELDGATE_CLOUD__{name}"] == "127.0.0.1"
            for probe in (c[k] for k in PROBES if k in c):
                port = probe["httpGet"]["port"]
                assert isinstance(port, int), (service, probe)
                # On the pod's own health port, or (the api's readiness) on the REST port.
                assert port == playable.health_ports[service] or (service, port) == ("api", 8080), (
                    service,
                    port,
                )


def test_secrets_for_env_and_for_volumes(rendered: list[mf.Manifest], playable: Playable) -> None:
    originals = {s["metadata"]["name"]: s for s in mf.of_kind(rendered, "Secret")}
    for d in playable.deployments:
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    flat = json.loads(playable.secrets[ref["name"]])
                    assert flat[ref["key"]] == originals[ref["name"]]["data"][ref["key"]]
        for v in spec["volumes"]:
            if "secret" not in v:
                continue
            name = v["secret"]["secretName"]
            assert name.endswith("-files") and v["secret"]["optional"] is False, v
            files = yaml.safe_load(playable.secrets[name])
            original = originals[name.removesuffix("-files")]["data"]
            assert files["data"] == {k: base64.b64decode(b).decode() for k, b in original.items()}
            assert name in playable.volumes


def test_empty_dirs_are_private_to_their_pod(playable: Playable) -> None:
    names: Counter[str] = Counter()
    for d in playable.deployments:
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            assert {m["name"] for m in c["volumeMounts"]} <= set(volumes), d["metadata"]["name"]
        for name, v in volumes.items():
            if "emptyDir" in v:
                assert name.startswith(d["metadata"]["name"] + "-") and name in playable.volumes
                names[name] += 1
    assert names and max(names.values()) == 1, names
