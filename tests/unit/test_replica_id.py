"""The ingest replica id: each replica's own consumer group on [command-invocations]."""

from __future__ import annotations

import socket

import pytest

from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.pipeline.delivery import delivery_group
from fieldgate.config import validate
from fieldgate.edge.config import EdgeConfig
from fieldgate.errors import ConfigError


def test_default_replica_id_is_host_and_port_so_replicas_differ() -> None:
    a = CloudConfig(grpc_port=50051).effective_replica_id()
    b = CloudConfig(grpc_port=50052).effective_replica_id()
    assert a != b
    assert a.endswith("-50051") and b.endswith("-50052")
    assert a == CloudConfig(grpc_port=50051).effective_replica_id()  # stable across restarts
    delivery_group(a)  # a valid group name whatever the host name holds


def test_default_replica_id_survives_a_strange_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "-gw 7/büro_")
    rid = CloudConfig(grpc_port=7000).effective_replica_id()
    assert rid == "gw-7-b-ro-7000"
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert CloudConfig(grpc_port=7000).effective_replica_id() == "host-7000"


def test_explicit_replica_id_names_the_group() -> None:
    config = validate(CloudConfig, {"replica_id": "ingest-2", "grpc_port": 0})
    assert config.effective_replica_id() == "ingest-2"
    assert delivery_group(config.effective_replica_id()) == "command-delivery.ingest-2"


@pytest.mark.parametrize("bad", ["", "bad id", "-lead", "x" * 101, "a/b", "ä"])
def test_malformed_replica_id_is_refused_with_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match="replica_id"):
        validate(CloudConfig, {"replica_id": bad}, "cloud.yaml")
    with pytest.raises(ValueError, match="replica id"):
        delivery_group(bad)


def test_uplink_target_lists_replicas_and_may_not_be_empty() -> None:
    config = validate(EdgeConfig, {"uplink": {"target": "ipv4:10.0.0.1:50051,10.0.0.2:50051"}})
    assert config.uplink.target == "ipv4:10.0.0.1:50051,10.0.0.2:50051"
    with pytest.raises(ConfigError, match=r"uplink\.target"):
        validate(EdgeConfig, {"uplink": {"target": ""}}, "edge.yaml")
