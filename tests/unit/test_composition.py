"""cloud/composition.py: THE list of services (one factory each, the CLI's choices), which
services a process runs, and THE list of tenant-owned stores the process's tenant admin uses.
Nothing here starts or connects anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fieldgate.cli import main
from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.composition import FACTORIES, SERVICE_ALIASES, SERVICES, TenantStores, resolve_services
from fieldgate.cloud.config import BusConfig, CloudConfig
from fieldgate.cloud.pipeline.state import DeviceStateStage
from fieldgate.errors import ConfigError


def embedded(tmp_path: Path) -> CloudConfig:
    return CloudConfig(data_dir=tmp_path, grpc_port=0, rest_port=0)


def kafka(tmp_path: Path) -> CloudConfig:
    return CloudConfig(
        data_dir=tmp_path, grpc_port=0, rest_port=0, bus=BusConfig(kind="kafka", bootstrap="127.0.0.1:1")
    )


def test_every_service_has_one_factory_in_start_order() -> None:
    assert list(FACTORIES) == list(SERVICES)
    assert SERVICES.index("ingest") > SERVICES.index("inbound") and SERVICES[-1] == "api"
    assert len(set(SERVICES)) == len(SERVICES)
    assert set(SERVICE_ALIASES.values()) <= set(SERVICES)
    assert not set(SERVICE_ALIASES) & set(SERVICES)


def test_cloud_run_help_lists_the_services(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["cloud", "run", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "{" + ",".join([*SERVICES, *SERVICE_ALIASES]) + "}" in out


def test_an_unknown_service_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'nope' is unknown") as err:
        resolve_services(kafka(tmp_path), ["nope"])
    for name in (*SERVICES, *SERVICE_ALIASES):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="no cloud service chosen"):
        resolve_services(kafka(tmp_path), [])


def test_single_services_need_kafka(tmp_path: Path) -> None:
    assert resolve_services(embedded(tmp_path), None) == frozenset(SERVICES)
    assert resolve_services(embedded(tmp_path), SERVICES) == frozenset(SERVICES)
    with pytest.raises(ConfigError, match="embedded bus works within one process only"):
        resolve_services(embedded(tmp_path), ["state"])
    assert resolve_services(kafka(tmp_path), ["command-delivery", "state"]) == {"ingest", "state"}


def test_the_all_in_one_process_runs_every_service_in_order(tmp_path: Path) -> None:
    app = CloudApp(embedded(tmp_path))
    assert [service.name for service in app.running_services] == list(SERVICES)
    assert all(service.runs for service in app.running_services)
    assert app.ingest is not None and app.live is not None and app.rest_app is None  # not started


def test_a_process_builds_only_its_services(tmp_path: Path) -> None:
    app = CloudApp(kafka(tmp_path), ["state"])
    assert [service.name for service in app.running_services] == ["state"]
    assert [type(part) for part in app.runs] == [DeviceStateStage]
    assert app.ingest is None and app.live is None and app.grpc_port == 0
    assert app.rest_port == 0  # the configured one: this process serves no REST API


def test_the_tenant_admin_uses_the_one_list_of_tenant_owned_stores(tmp_path: Path) -> None:
    parts = CloudApp(embedded(tmp_path)).parts
    stores = parts.tenant_stores
    assert isinstance(stores, TenantStores)
    # Without ZooKeeper there is no rule copy there; every other field is a store of the process.
    assert [name for name, _store in stores.owned()] == [
        f.name for f in dataclasses.fields(stores) if f.name != "rules_zk"
    ]
    assert stores.users is parts.users and stores.events is parts.event_store
