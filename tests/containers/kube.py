"""The chart's rendered objects, made playable by ``podman kube play`` (podman 4.3) on one
machine with no cluster — the chart itself is not changed for podman.

What ``for_podman`` does to the rendered YAML, and why (docs/operations/containers.md):

- **Only the Deployments are played.** Services, PodDisruptionBudgets, the ServiceAccount and
  autoscalers need a cluster (kube-proxy, the eviction API, the API server); podman has no use
  for them. The ConfigMap goes to ``--configmap`` (podman reads ConfigMaps only from there) and
  each Secret becomes a podman secret (below).
- **hostNetwork: true, no containerPorts.** The test's Kafka, Cassandra and ZooKeeper listen on
  127.0.0.1, which only the machine's own network namespace reaches; and podman 4.3 refuses
  containerPorts without a bridge or slirp4netns network ("PortMappings can only be used with
  Bridge or slirp4netns networking") even with hostNetwork.
- **Each pod its own health port, every listener on 127.0.0.1** (FIELDGATE_CLOUD__HEALTH__PORT,
  ..._HOST environment overrides). In a cluster each pod has its own network namespace, so
  every service can listen on 0.0.0.0:8081; on the machine's shared network the seven health
  listeners would collide, and 0.0.0.0 would mean every interface of the machine. The probes'
  named ports (gone with containerPorts) become these numbers.
- **A Secret is two podman secrets.** An env ``secretKeyRef`` looks the key up in a flat JSON
  object of base64 values (podman secret ``<name>``); a Secret *volume* wants a Kubernetes
  Secret (podman secret ``<name>-files``, the volume's secretName renamed to it) and writes its
  ``data`` values to the files without decoding them, so that copy holds the decoded text.
  A Secret volume without ``optional`` panics podman 4.3: ``optional: false`` (its meaning in
  Kubernetes) is written out.
- **emptyDirs renamed per pod.** podman 4.3 makes an emptyDir a named volume named after the
  pod's volume (``data``, ``tmp``), shared by every pod that uses that name — the chart's "data
  is private to the pod" would not hold. Each becomes ``<deployment>-<volume>``.
Probes, startup and preStop hooks are not run by podman 4.3: the test checks each pod's
``/readyz`` itself, as the kubelet's readiness probe would.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

Manifest = dict[str, Any]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
COMPONENT = "app.kubernetes.io/component"


@dataclass
class Playable:
    """What ``podman kube play`` is given, and the names of what it will create."""

    deployments: list[Manifest]
    configmaps: list[Manifest]
    # podman secret name → its content (JSON for env references, a Secret's YAML for volumes).
    secrets: dict[str, str]
    # service (app.kubernetes.io/component) → the port of its /healthz and /readyz.
    health_ports: dict[str, int] = field(default_factory=dict)
    # Named volumes podman creates for the pods (emptyDirs, ConfigMaps, Secret volumes).
    volumes: list[str] = field(default_factory=list)

    @property
    def services(self) -> list[str]:
        return [d["spec"]["template"]["metadata"]["labels"][COMPONENT] for d in self.deployments]

    def pod(self, service: str) -> str:
        """The pod podman 4.3 makes of the service's Deployment: ``<deployment>-pod-0``."""
        return f"{self._deployment(service)['metadata']['name']}-pod-0"

    def container(self, service: str) -> str:
        """The container of that pod: ``<pod>-<container>``."""
        name = self._deployment(service)["spec"]["template"]["spec"]["containers"][0]["name"]
        return f"{self.pod(service)}-{name}"

    def limit(self, service: str, resource: str) -> str:
        """The container's ``resources.limits[resource]`` as rendered."""
        container = self._deployment(service)["spec"]["template"]["spec"]["containers"][0]
        return str(container["resources"]["limits"][resource])

    def _deployment(self, service: str) -> Manifest:
        return next(
            d for d in self.deployments if d["spec"]["template"]["metadata"]["labels"][COMPONENT] == service
        )

    def yaml(self) -> str:
        return yaml.safe_dump_all(self.deployments, sort_keys=False)

    def configmap_yaml(self) -> str:
        return yaml.safe_dump_all(self.configmaps, sort_keys=False)


def _files_secret(secret: Manifest) -> str:
    """The Kubernetes Secret a Secret volume reads, with its values decoded (podman 4.3 writes
    ``data`` values to the files as they are)."""
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{secret['metadata']['name']}-files"},
            "type": secret.get("type", "Opaque"),
            "data": data,
        }
    )


def _env_secret(secret: Manifest) -> str:
    """The flat ``{key: base64 value}`` JSON an env ``secretKeyRef`` reads in podman 4.3."""
    data = dict(secret.get("data") or {})
    data.update(
        {k: base64.b64encode(v.encode()).decode() for k, v in (secret.get("stringData") or {}).items()}
    )
    return json.dumps(data)


def _set_env(container: Manifest, name: str, value: str) -> None:
    env = [e for e in container.get("env", []) if e["name"] != name]
    container["env"] = [*env, {"name": name, "value": value}]


def for_podman(rendered: list[Manifest], health_port: dict[str, int]) -> Playable:
    """The rendered objects transformed as the module's docstring says; ``health_port`` gives
    each service (app.kubernetes.io/component) its own port on the shared network."""
    secrets: dict[str, str] = {}
    for secret in (m for m in rendered if m.get("kind") == "Secret"):
        secrets[secret["metadata"]["name"]] = _env_secret(secret)
        secrets[f"{secret['metadata']['name']}-files"] = _files_secret(secret)
    playable = Playable(
        deployments=[],
        configmaps=[copy.deepcopy(m) for m in rendered if m.get("kind") == "ConfigMap"],
        secrets=secrets,
    )
    for original in (m for m in rendered if m.get("kind") == "Deployment"):
        deployment = copy.deepcopy(original)
        name = deployment["metadata"]["name"]
        service = deployment["spec"]["template"]["metadata"]["labels"][COMPONENT]
        spec = deployment["spec"]["template"]["spec"]
        spec["hostNetwork"] = True
        port = health_port[service]
        playable.health_ports[service] = port
        for container in spec["containers"]:
            named = {p["name"]: p["containerPort"] for p in container.pop("ports", [])}
            named["health"] = port
            for probe in (container[k] for k in PROBES if k in container):
                for action in ("httpGet", "tcpSocket", "grpc"):
                    if action in probe and isinstance(probe[action].get("port"), str):
                        probe[action]["port"] = named[probe[action]["port"]]
                if "httpGet" in probe and probe["httpGet"]["port"] == original_health_port(original):
                    probe["httpGet"]["port"] = port
            _set_env(container, "FIELDGATE_CLOUD__HEALTH__PORT", str(port))
            _set_env(container, "FIELDGATE_CLOUD__HEALTH__HOST", "127.0.0.1")
            _set_env(container, "FIELDGATE_CLOUD__REST_HOST", "127.0.0.1")
            _set_env(container, "FIELDGATE_CLOUD__GRPC_HOST", "127.0.0.1")
        renamed: dict[str, str] = {}
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                renamed[volume["name"]] = f"{name}-{volume['name']}"
                volume["name"] = renamed[volume["name"]]
                playable.volumes.append(volume["name"])
            elif "secret" in volume:
                volume["secret"]["secretName"] = f"{volume['secret']['secretName']}-files"
                volume["secret"].setdefault("optional", False)
                playable.volumes.append(volume["secret"]["secretName"])
            elif "configMap" in volume:
                playable.volumes.append(volume["configMap"]["name"])
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                mount["name"] = renamed.get(mount["name"], mount["name"])
        playable.deployments.append(deployment)
    playable.volumes = sorted(set(playable.volumes))
    return playable


def original_health_port(deployment: Manifest) -> int | None:
    """The health containerPort the chart gave the Deployment's container (probes that named
    it by number rather than by name are moved to the pod's own port too)."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for p in container.get("ports", []):
            if p.get("name") == "health":
                return int(p["containerPort"])
    return None
