"""The edge agent's k3s manifests (k3s/base and its overlays), built with kustomize: valid
objects for the Kubernetes versions, a configuration the agent accepts, probes on the port the
agent serves them on, the buffer on a hostPath at data_dir, and the device access each overlay
promises."""

from __future__ import annotations

from pathlib import Path

import yaml

from fieldgate.edge.config import EdgeConfig
from tests.deploy import manifests as mf

Build = tuple[str, list[mf.Manifest]]
# The init container that hands the hostPath buffer directory to the agent's user.
ROOT_INIT = {"buffer-dir-owner": {"CHOWN"}}


def daemonset(manifests: list[mf.Manifest]) -> mf.Manifest:
    return mf.one(manifests, "DaemonSet", "fieldgate-edge")


def agent(manifests: list[mf.Manifest]) -> mf.Manifest:
    containers: list[mf.Manifest] = mf.pod_spec(daemonset(manifests))["containers"]
    (c,) = containers
    return c


def edge_config_text(manifests: list[mf.Manifest]) -> str:
    """The edge.yaml of the ConfigMap the DaemonSet mounts (by its generated name)."""
    source = mf.mounted_file(daemonset(manifests), "edge-agent", "/etc/fieldgate/edge.yaml", manifests)
    assert source is not None and source[0] == "ConfigMap", "edge.yaml is not mounted from a ConfigMap"
    name = source[1].split("/")[0]
    text: str = mf.one(manifests, "ConfigMap", name)["data"]["edge.yaml"]
    return text


def edge_config(manifests: list[mf.Manifest]) -> EdgeConfig:
    from fieldgate import config as cfg

    return cfg.validate(EdgeConfig, yaml.safe_load(edge_config_text(manifests)), "edge.yaml")


def test_every_object_is_valid_for_the_kubernetes_versions(k3s_build: Build) -> None:
    _, manifests = k3s_build
    assert mf.schema_problems(manifests) == []


def test_the_configuration_is_one_the_agent_accepts(k3s_build: Build) -> None:
    name, manifests = k3s_build
    assert mf.config_problems(edge_config_text(manifests), EdgeConfig, f"{name} edge.yaml") == []
    conf = edge_config(manifests)
    assert conf.metrics_port == 9100 and conf.metrics_host == "0.0.0.0"
    assert conf.mqtt.mode == "embedded" and conf.mqtt.host == "0.0.0.0"
    assert conf.uplink.target.endswith(":50051")


def test_agent_runs_on_gateways_with_its_buffer_on_the_node(k3s_build: Build) -> None:
    _, manifests = k3s_build
    conf = edge_config(manifests)
    ds = daemonset(manifests)
    spec = mf.pod_spec(ds)
    assert spec["nodeSelector"]["fieldgate.io/gateway"] == "true"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0  # one agent per buffer
    assert spec["terminationGracePeriodSeconds"] >= 10
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in agent(manifests)["volumeMounts"]}
    buffer = volumes[mounts[str(conf.data_dir)]]
    assert buffer["hostPath"] == {"path": str(conf.data_dir), "type": "DirectoryOrCreate"}
    assert conf.resolve(conf.buffer.path).is_relative_to(conf.data_dir)
    # edge_id comes from the node: every gateway has its own stream in the cloud.
    env = {e["name"]: e for e in agent(manifests)["env"]}
    assert env["FIELDGATE_EDGE__EDGE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent(manifests)["resources"]["limits"]["memory"]


def test_probes_metrics_and_mqtt_ports(k3s_build: Build) -> None:
    _, manifests = k3s_build
    conf = edge_config(manifests)
    assert mf.probe_problems(manifests, {conf.metrics_port: {"/healthz", "/readyz", "/metrics"}}) == []
    ports = {p["name"]: p for p in agent(manifests)["ports"]}
    assert ports["mqtt"]["containerPort"] == conf.mqtt.port and ports["mqtt"]["hostPort"] == conf.mqtt.port
    annotations = daemonset(manifests)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]["containerPort"] == conf.metrics_port


def test_containers_are_non_root(k3s_build: Build) -> None:
    _, manifests = k3s_build
    assert mf.security_problems(manifests, ROOT_INIT) == []
    init = {c["name"]: c for c in mf.pod_spec(daemonset(manifests))["initContainers"]}
    assert init["buffer-dir-owner"]["command"][:2] == ["chown", "10001:10001"]


def test_gateway_overlay_gives_the_serial_ports_of_its_configuration(kustomize: Path) -> None:
    manifests = mf.kustomize_build(kustomize, mf.K3S / "overlays" / "gateway")
    conf = edge_config(manifests)
    assert conf.serial.enabled and conf.modbus.enabled
    wanted = {p.port for p in conf.serial.ports} | {b.port for b in conf.modbus.buses}
    spec = mf.pod_spec(daemonset(manifests))
    volumes = {v["name"]: v for v in spec["volumes"]}
    c = agent(manifests)
    devices = {
        m["mountPath"]: volumes[m["name"]]["hostPath"]
        for m in c["volumeMounts"]
        if volumes[m["name"]].get("hostPath", {}).get("type") == "CharDevice"
    }
    assert set(devices) == wanted
    assert all(d["path"] == path for path, d in devices.items())
    # The device cgroup: privileged; the user stays 10001, in dialout for the file permissions.
    assert c["securityContext"]["privileged"] is True
    assert 20 in spec["securityContext"]["supplementalGroups"]
    assert spec["nodeSelector"] == {"fieldgate.io/gateway": "true", "fieldgate.io/serial": "true"}


def test_ble_overlay_gives_the_dbus_socket_and_enables_ble(kustomize: Path) -> None:
    manifests = mf.kustomize_build(kustomize, mf.K3S / "overlays" / "gateway-ble")
    conf = edge_config(manifests)
    assert conf.ble.enabled and conf.ble.devices
    spec = mf.pod_spec(daemonset(manifests))
    volumes = {v["name"]: v for v in spec["volumes"]}
    c = agent(manifests)
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    socket = mounts["/run/dbus/system_bus_socket"]["hostPath"]
    assert socket == {"path": "/run/dbus/system_bus_socket", "type": "Socket"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DBUS_SYSTEM_BUS_ADDRESS"] == "unix:path=/run/dbus/system_bus_socket"
    # BLE through BlueZ needs no device access: the container stays unprivileged.
    assert not c["securityContext"].get("privileged", False)
    assert spec["nodeSelector"] == {"fieldgate.io/gateway": "true", "fieldgate.io/ble": "true"}


def test_uplink_uses_mutual_tls_with_the_gateways_own_certificate(k3s_build: Build) -> None:
    _, manifests = k3s_build
    up = edge_config(manifests).uplink
    assert up.ca_file is not None and up.cert_file is not None and up.key_file is not None
    spec = mf.pod_spec(daemonset(manifests))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in (up.ca_file, up.cert_file, up.key_file):
        mount = next(
            (m for m in agent(manifests)["volumeMounts"] if path.is_relative_to(m["mountPath"])), None
        )
        assert mount is not None, f"nothing mounted at {path}"
        assert mount.get("readOnly") is True
        # Per gateway, provisioned on the node: not created empty when it is missing.
        assert volumes[mount["name"]]["hostPath"]["type"] == "Directory"
