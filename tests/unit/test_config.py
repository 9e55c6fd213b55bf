"""Configuration: typed, validated at load, errors name the key; environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate import config as cfg
from fieldgate.cli import main
from fieldgate.cloud.config import CloudConfig
from fieldgate.edge.config import EdgeConfig
from fieldgate.errors import ConfigError


def test_defaults_are_the_embedded_one_machine_setup() -> None:
    edge = cfg.load(EdgeConfig)
    assert edge.mqtt.mode == "embedded" and edge.mqtt.port == 1883 and edge.mqtt.host == "127.0.0.1"
    cloud = cfg.load(CloudConfig)
    assert [t.token for t in cloud.tenants] == ["default"] and cloud.rest_port == 8080


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text("mqtt:\n  port: 70000\nbuffer:\n  overflow: sometimes\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        cfg.load(EdgeConfig, f)
    text = str(err.value)
    assert "mqtt.port" in text and "buffer.overflow" in text and "bogus" in text and str(f) in text


@pytest.mark.parametrize("text", ["[1, 2]", "mqtt: [\n", "42"])
def test_not_a_mapping_or_not_yaml(tmp_path: Path, text: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=str(f)):
        cfg.load(CloudConfig, f)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.load(EdgeConfig, tmp_path / "nope.yaml")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text("mqtt:\n  port: 1884\n")
    env = {"FIELDGATE_EDGE__MQTT__PORT": "1999", "FIELDGATE_EDGE__EDGE_ID": "gw-7", "OTHER": "x"}
    edge = cfg.load(EdgeConfig, f, env_prefix="FIELDGATE_EDGE", environ=env)
    assert edge.mqtt.port == 1999 and edge.edge_id == "gw-7"


def test_models_are_frozen() -> None:
    edge = cfg.load(EdgeConfig)
    with pytest.raises(Exception, match="frozen"):
        edge.mqtt.port = 1  # type: ignore[misc]


def test_tenant_tokens_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"tenants\.0\.token"):
        cfg.validate(CloudConfig, {"tenants": [{"token": "../etc"}]})


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("edge_id: gw-1\n")
    assert main(["config", "check", "edge", str(good)]) == 0
    assert '"edge_id": "gw-1"' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("uplink:\n  batch_max_events: 0\n")
    assert main(["config", "check", "edge", str(bad)]) == 2
    assert "uplink.batch_max_events" in capsys.readouterr().err


def test_distributed_backends_validate(tmp_path: Path) -> None:
    f = tmp_path / "cloud.yaml"
    f.write_text(
        "bus:\n  kind: kafka\n  bootstrap: 127.0.0.1:19092\n  partitions: 6\n"
        "store:\n  kind: cassandra\n  hosts: [127.0.0.1, 127.0.0.2]\n  port: 19042\n"
        "zookeeper:\n  hosts: 127.0.0.1:12181\n  instance: plant-a\n"
    )
    cloud = cfg.load(CloudConfig, f)
    assert cloud.bus.kind == "kafka" and cloud.bus.bootstrap == "127.0.0.1:19092"
    assert cloud.bus.partitions == 6 and cloud.bus.replication == 1
    assert cloud.store.kind == "cassandra" and cloud.store.hosts == ("127.0.0.1", "127.0.0.2")
    assert cloud.store.port == 19042
    assert cloud.zookeeper is not None and cloud.zookeeper.instance == "plant-a"
    default = cfg.load(CloudConfig)
    assert default.bus.kind == "embedded" and default.store.kind == "sqlite" and default.zookeeper is None


def test_distributed_backends_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        cfg.validate(
            CloudConfig,
            {
                "bus": {"kind": "rabbit", "partitions": 0},
                "store": {"kind": "cassandra", "hosts": [], "port": 0},
                "zookeeper": {"instance": "Bad/Name"},
            },
        )
    text = str(err.value)
    for key in ("bus.kind", "bus.partitions", "store.hosts", "store.port", "zookeeper.instance"):
        assert key in text


def test_cloud_run_refuses_a_single_service_on_the_embedded_bus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "cloud.yaml"
    f.write_text(f"data_dir: {tmp_path / 'cloud'}\n")
    assert main(["cloud", "run", "--config", str(f), "inbound"]) == 2
    err = capsys.readouterr().err
    assert "embedded bus" in err and "bus.kind: kafka" in err


def test_zookeeper_instance_settings_keep_the_files_secrets() -> None:
    """ZooKeeper's instance znode sets the token lifetime; the signing key (inline or a mounted
    key file, e.g. a Kubernetes Secret) stays the service's own."""
    from pathlib import Path

    from fieldgate.cloud.config import AuthConfig, CloudConfig
    from fieldgate.cloud.zk.models import InstanceSettings, ZkConfig

    base = CloudConfig(auth=AuthConfig(secret_file=Path("/etc/fieldgate/secrets/jwt-key")))
    instance = InstanceSettings.from_cloud_config(base).model_copy(update={"token_ttl_s": 120})
    merged = ZkConfig(instance=instance).apply_to(base)
    assert merged.auth.secret_file == Path("/etc/fieldgate/secrets/jwt-key")
    assert merged.auth.token_ttl_s == 120
