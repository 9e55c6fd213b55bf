"""Rendering and checking the deployment manifests (charts/fieldgate, k3s/).

Finding the pinned tools (helm, kustomize: scripts/deploy_tools.sh), rendering, schema
validation with kubernetes-validate, and the semantic checks a reviewer makes by eye. Each check
is a pure function that returns the problems it found (empty = fine), so that the tests can also
feed it a deliberately broken manifest and see it complain (tests/deploy/test_checks.py).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fieldgate"
K3S = ROOT / "k3s"
HERE = Path(__file__).resolve().parent
TOOLS_DIR = Path(os.environ.get("FIELDGATE_TOOLS_DIR") or Path.home() / ".cache" / "fieldgate" / "bin")
# kubernetes-validate ships schemas for these (among others); the oldest Kubernetes the chart
# supports (Chart.yaml kubeVersion) and a current one.
KUBERNETES_VERSIONS = ("1.30", "1.34")
Manifest = dict[str, Any]


def tool(name: str) -> Path:
    """The binary of a pinned tool: ``$FIELDGATE_<NAME>``, else the cache of
    scripts/deploy_tools.sh, else PATH. Missing: a failure with CI=true, a skip otherwise."""
    configured = os.environ.get(f"FIELDGATE_{name.upper()}")
    candidates = [Path(configured)] if configured else [TOOLS_DIR / name]
    if not configured and (found := shutil.which(name)):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    reason = f"{name} not found ({', '.join(map(str, candidates))}): run bash scripts/deploy_tools.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run(argv: list[str | Path], *, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def load_all(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _value_args(
    values_files: Iterable[Path], sets: Iterable[str], set_files: Iterable[str]
) -> list[str | Path]:
    argv: list[str | Path] = []
    for f in values_files:
        argv += ["--values", f]
    for s in sets:
        argv += ["--set", s]
    for s in set_files:
        argv += ["--set-file", s]
    return argv


def helm_template(
    helm: Path,
    *values_files: Path,
    sets: Iterable[str] = (),
    set_files: Iterable[str] = (),
    release: str = "fg",
) -> list[Manifest]:
    argv: list[str | Path] = [helm, "template", release, CHART, "--namespace", "fieldgate"]
    argv += _value_args(values_files, sets, set_files)
    return load_all(run(argv).stdout)


def helm_notes(helm: Path, *values_files: Path, sets: Iterable[str] = ()) -> str:
    """What ``helm install`` prints after installing (NOTES.txt), rendered without a cluster."""
    argv: list[str | Path] = [helm, "install", "fg", CHART, "--namespace", "fieldgate", "--dry-run=client"]
    argv += _value_args(values_files, sets, ())
    out = run(argv).stdout
    assert "\nNOTES:\n" in out, out[-2000:]
    return out.split("\nNOTES:\n", 1)[1]


def kustomize_build(kustomize: Path, directory: Path) -> list[Manifest]:
    return load_all(run([kustomize, "build", directory]).stdout)


def schema_problems(manifests: list[Manifest], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    """Every object against the API schemas of each Kubernetes version, strictly (an unknown
    field is an error, as the API server's strict field validation makes it)."""
    import kubernetes_validate

    problems = []
    for version in versions:
        for m in manifests:
            try:
                kubernetes_validate.validate(m, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                problems.append(f"{version} {kind_name(m)}: {path}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError as err:
                problems.append(f"{version} {kind_name(m)}: {err.message}")
    return problems


def kind_name(m: Manifest) -> str:
    return f"{m.get('kind')}/{m.get('metadata', {}).get('name')}"


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") in ("Deployment", "DaemonSet", "StatefulSet")]


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def containers(spec: Manifest, *, init: bool = True) -> Iterator[Manifest]:
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def mutated(manifests: list[Manifest]) -> list[Manifest]:
    """A deep copy to break on purpose."""
    return copy.deepcopy(manifests)


# ---- semantic checks ----------------------------------------------------------------------


def _port_numbers(container: Manifest) -> dict[str | int, int]:
    out: dict[str | int, int] = {}
    for p in container.get("ports", []):
        out[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            out[p["name"]] = p["containerPort"]
    return out


def probe_problems(manifests: list[Manifest], served: dict[int, set[str]] | None = None) -> list[str]:
    """Every long-running container has liveness and readiness probes on a port the container
    declares; HTTP probes ask for a path the process serves on that port (``served``: port →
    paths, from the health contract), gRPC probes target a declared port."""
    problems = []
    for w in workloads(manifests):
        for c in containers(pod_spec(w), init=False):
            where = f"{kind_name(w)} container {c['name']}"
            ports = _port_numbers(c)
            for kind in ("livenessProbe", "readinessProbe"):
                probe = c.get(kind)
                if not probe:
                    problems.append(f"{where}: no {kind}")
                    continue
                if "httpGet" in probe:
                    port = ports.get(probe["httpGet"]["port"])
                    path = probe["httpGet"].get("path", "/")
                    if port is None:
                        problems.append(
                            f"{where}: {kind} port {probe['httpGet']['port']} is not a container port"
                        )
                    elif served is not None and path not in served.get(port, set()):
                        problems.append(
                            f"{where}: {kind} asks for {path} on {port}, which serves {served.get(port)}"
                        )
                elif "grpc" in probe:
                    if probe["grpc"]["port"] not in ports.values():
                        problems.append(
                            f"{where}: {kind} gRPC port {probe['grpc']['port']} is not a container port"
                        )
                else:
                    problems.append(f"{where}: {kind} is neither httpGet nor grpc: {probe}")
    return problems


def security_problems(
    manifests: list[Manifest], root_allowed: dict[str, set[str]] | None = None
) -> list[str]:
    """Every container runs as a non-root user, cannot gain privileges, drops ALL capabilities,
    has a read-only root filesystem and the RuntimeDefault seccomp profile. ``root_allowed``:
    init containers (by name) allowed to run as root, with the only capabilities they may add."""
    root_allowed = root_allowed or {}
    problems = []
    for w in workloads(manifests):
        spec = pod_spec(w)
        pod = spec.get("securityContext", {})
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{kind_name(w)}: pod seccompProfile is not RuntimeDefault")
        for c in containers(spec):
            where = f"{kind_name(w)} container {c['name']}"
            sc = c.get("securityContext", {})
            non_root = sc.get("runAsNonRoot", pod.get("runAsNonRoot"))
            user = sc.get("runAsUser", pod.get("runAsUser"))
            adds = set(sc.get("capabilities", {}).get("add", []))
            if c["name"] in root_allowed and c in spec.get("initContainers", []):
                if not adds <= root_allowed[c["name"]]:
                    problems.append(
                        f"{where}: adds {sorted(adds)}, allowed {sorted(root_allowed[c['name']])}"
                    )
            else:
                if non_root is not True or not isinstance(user, int) or user == 0:
                    problems.append(f"{where}: not non-root (runAsNonRoot={non_root}, runAsUser={user})")
                if adds:
                    problems.append(f"{where}: adds capabilities {sorted(adds)}")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: does not drop ALL capabilities")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            privileged = sc.get("privileged", False)
            if privileged and sc.get("allowPrivilegeEscalation") is False:
                problems.append(
                    f"{where}: privileged with allowPrivilegeEscalation false (the API server refuses it)"
                )
            if not privileged and sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
    return problems


def selector_problems(manifests: list[Manifest]) -> list[str]:
    """Services and PodDisruptionBudgets select the pods of exactly one workload; a Service's
    target ports exist on the selected containers."""
    problems = []
    ws = workloads(manifests)
    for svc in of_kind(manifests, "Service"):
        selector = svc["spec"].get("selector", {})
        selected = [w for w in ws if matches(selector, pod_labels(w))]
        if len(selected) != 1:
            problems.append(f"{kind_name(svc)}: selector {selector} matches {len(selected)} workloads")
            continue
        ports: dict[str | int, int] = {}
        for c in containers(pod_spec(selected[0]), init=False):
            ports.update(_port_numbers(c))
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if target not in ports:
                problems.append(
                    f"{kind_name(svc)}: targetPort {target} is not a port of {kind_name(selected[0])}"
                )
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"].get("matchLabels", {})
        selected = [w for w in ws if matches(selector, pod_labels(w))]
        if len(selected) != 1:
            problems.append(f"{kind_name(pdb)}: selector {selector} matches {len(selected)} workloads")
    for w in ws:
        if not matches(w["spec"]["selector"]["matchLabels"], pod_labels(w)):
            problems.append(f"{kind_name(w)}: its selector does not match its own pod template")
    return problems


def mounted_file(
    workload: Manifest, container: str, path: str, manifests: list[Manifest]
) -> tuple[str, str] | None:
    """(volume kind, object name/key) that provides the file ``path`` in ``container``, or None
    when no volume mount (with an object that has that key) puts a file there."""
    spec = pod_spec(workload)
    c = next(c for c in containers(spec) if c["name"] == container)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        vol = volumes.get(mount["name"], {})
        for kind, key in (("secret", "secretName"), ("configMap", "name")):
            if kind not in vol:
                continue
            source = vol[kind]
            items = source.get("items")
            keys = {i["path"]: i["key"] for i in items} if items else None
            key_name = keys.get(rel) if keys is not None else rel
            if key_name is None:
                continue
            obj_kind = "Secret" if kind == "secret" else "ConfigMap"
            objs = [m for m in of_kind(manifests, obj_kind) if m["metadata"]["name"] == source[key]]
            # An existingSecret is not rendered: its key cannot be checked here.
            if not objs or key_name in objs[0].get("data", {}) or key_name in objs[0].get("stringData", {}):
                return (obj_kind, f"{source[key]}/{key_name}")
    return None


def config_problems(text: str, model: type[Any], origin: str) -> list[str]:
    """The configuration file validates against the real pydantic model (as the process loads
    it: fieldgate.config.validate, so unknown keys and bad values fail)."""
    from fieldgate import config as cfg
    from fieldgate.errors import ConfigError

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return [f"{origin}: not a mapping"]
    try:
        cfg.validate(model, data, origin)
    except ConfigError as err:
        return [str(err)]
    return []
