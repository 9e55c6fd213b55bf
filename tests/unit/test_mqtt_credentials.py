"""The credentials file, password hashes, topic ACL decisions and the Mosquitto files (pure code)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fieldgate.config import validate
from fieldgate.edge.adapters.mqtt import acl, acl_mosquitto
from fieldgate.edge.adapters.mqtt.acl import Principal
from fieldgate.edge.adapters.mqtt.credentials import (
    CredentialStore,
    mosquitto_hash,
    new_identity,
    verify_mosquitto_hash,
    verify_password,
)
from fieldgate.edge.config import EdgeConfig
from fieldgate.errors import ConfigError

# Written by Mosquitto 2.0.11's own mosquitto_passwd for the password "secret".
MOSQUITTO_PASSWD_LINE = "alice:$7$101$AjJkmTHrxaBx0tJa$hg+ors4FseXGKvOS6oBJ67cbyGHYuTERMgsVW/gDu0b4ZlR80Q/s/qIeKbGzUllqh3g6XQc8Vcck17NcndSfcA=="


def test_mosquitto_hash_matches_mosquitto_passwd() -> None:
    stored = MOSQUITTO_PASSWD_LINE.split(":", 1)[1]
    assert verify_mosquitto_hash(stored, "secret")
    assert not verify_mosquitto_hash(stored, "Secret")
    import base64

    salt = base64.b64decode("AjJkmTHrxaBx0tJa")
    assert mosquitto_hash("secret", iterations=101, salt=salt) == stored
    assert mosquitto_hash("secret") != mosquitto_hash("secret")  # random salt


def test_argon2_identity_round_trip_and_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "creds.yaml"
    store = CredentialStore(path)
    store.add(new_identity("dev-a", "default", "dev-a", "password-a-123"))
    store.add(new_identity("gw", "default", "gw", "password-gw-123", devices=["sim-*"]))
    with pytest.raises(ConfigError, match="exists already"):
        store.add(new_identity("dev-a", "default", "other", "password-a-123"))
    with pytest.raises(ConfigError, match="has credentials already"):
        store.add(new_identity("dev-a2", "default", "dev-a", "password-a-123"))
    store.save()
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "password-a-123" not in text
    loaded = CredentialStore.load(path)
    identity = loaded.get("dev-a")
    assert identity is not None and identity.password_hash.startswith("$argon2id$")
    assert verify_password(identity.password_hash, "password-a-123")
    assert not verify_password(identity.password_hash, "password-a-124")
    assert identity.mosquitto_hash is not None and verify_mosquitto_hash(
        identity.mosquitto_hash, "password-a-123"
    )
    assert [i.username for i in loaded] == ["dev-a", "gw"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("identities: [{username: a, tenant: t, device: d}]", "identities.0.password_hash: Field required"),
        (
            "identities: [{username: a, tenant: 't/x', device: d, password_hash: x}]",
            "identities.0.tenant: Value error, 't/x' is not a valid token",
        ),
        ("identities: [{username: 'a b', tenant: t, device: d, password_hash: x}]", "identities.0.username"),
        ("identities: [{username: a, tenant: t, device: d, password_hash: '$6$x'}]", "not an argon2id hash"),
        (
            "identities: [{username: a, tenant: t, device: d, colour: red}]",
            "identities.0.colour: Extra inputs",
        ),
        ("- just a list", "(top level): expected a mapping"),
        ("identities: [{", "not valid YAML"),
    ],
)
def test_bad_credentials_file_names_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        CredentialStore.load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_duplicate_usernames_refused(tmp_path: Path) -> None:
    one = new_identity("a", "t", "d1", "password-123456")
    two = new_identity("a", "t", "d2", "password-123456")
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"identities": [one.model_dump(), two.model_dump()]}))
    with pytest.raises(ConfigError, match="username 'a' appears twice"):
        CredentialStore.load(path)


def test_acl_of_a_device_a_gateway_and_an_enrolling_client() -> None:
    dev = Principal("dev-a", "default", "dev-a")
    assert acl.may_publish(dev, "fieldgate/default/devices/dev-a/events")
    assert acl.may_publish(dev, "fieldgate/default/devices/dev-a/events/pb")
    assert acl.may_publish(dev, "SiteWhere/default/input/json")
    for topic in [
        "fieldgate/default/devices/dev-b/events",
        "fieldgate/acme/devices/dev-a/events",
        "SiteWhere/acme/input/json",
        "fieldgate/default/devices/dev-a/commands",
        "other/topic",
    ]:
        assert not acl.may_publish(dev, topic), topic
    assert acl.may_subscribe(dev, "fieldgate/default/devices/dev-a/commands")
    for topic_filter in [
        "fieldgate/default/devices/dev-b/commands",
        "fieldgate/default/devices/+/commands",
        "fieldgate/#",
        "#",
        "$SYS/#",
        "fieldgate/default/devices/dev-a/credentials",
    ]:
        assert not acl.may_subscribe(dev, topic_filter), topic_filter
    assert dev.speaks_for("default", "dev-a") and not dev.speaks_for("default", "dev-b")

    gw = Principal("gw", "default", "gw", patterns=("sim-*",))
    assert acl.may_publish(gw, "fieldgate/default/devices/sim-9/events")
    assert not acl.may_publish(gw, "fieldgate/default/devices/dev-a/events")
    assert not acl.may_subscribe(gw, "fieldgate/default/devices/+/commands")
    assert Principal("all", "default", "all", patterns=("*",)) and acl.may_subscribe(
        Principal("all", "default", "all", patterns=("*",)), "fieldgate/default/devices/+/commands"
    )

    # Link reports (and wills) on a device's own link topic only.
    device = Principal("dev-a", "default", "dev-a")
    assert acl.may_publish(device, "fieldgate/default/devices/dev-a/link")
    assert not acl.may_publish(device, "fieldgate/default/devices/dev-b/link")
    assert not acl.may_publish(device, "fieldgate/other/devices/dev-a/link")

    enrolling = Principal("enroll:default:new", "default", "new", enrolling=True)
    assert not acl.may_publish(enrolling, "fieldgate/default/devices/new/link")
    assert not acl.may_publish(enrolling, "fieldgate/default/devices/new/events")
    assert acl.may_subscribe(enrolling, "fieldgate/default/devices/new/credentials")
    assert not acl.may_subscribe(enrolling, "fieldgate/default/devices/new/commands")
    assert not enrolling.speaks_for("default", "new")


def test_sitewhere_command_and_system_topics_are_the_devices_own() -> None:
    dev = Principal("dev-a", "default", "dev-a")
    for topic in ("SiteWhere/default/command/dev-a", "SiteWhere/default/system/dev-a"):
        assert acl.may_subscribe(dev, topic) and acl.may_receive(dev, topic), topic
    for topic in (
        "SiteWhere/default/command/dev-b",
        "SiteWhere/other/command/dev-a",
        "SiteWhere/default/command/+",
        "SiteWhere/default/#",
        "SiteWhere/default/input/protobuf",
    ):
        assert not acl.may_subscribe(dev, topic), topic
    assert acl.may_publish(dev, "SiteWhere/default/input/protobuf")
    assert not acl.may_publish(dev, "SiteWhere/other/input/protobuf")
    assert not acl.may_publish(dev, "SiteWhere/default/command/dev-a")


def test_mosquitto_acl_file() -> None:
    dev = new_identity("dev-a", "default", "dev-a", "password-123456")
    gw = new_identity("gw", "acme", "gw", "password-123456", devices=["pump-1"])
    text = acl_mosquitto.acl_file([dev, gw], agent_username="edge")
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.split("\n\n") if b.startswith("user")}
    assert blocks["user dev-a"] == [
        "topic write fieldgate/default/devices/dev-a/events",
        "topic write fieldgate/default/devices/dev-a/events/pb",
        "topic write fieldgate/default/devices/dev-a/link",
        "topic read fieldgate/default/devices/dev-a/commands",
    ]
    assert "topic read fieldgate/+/devices/+/link" in blocks["user edge"]
    assert "topic read fieldgate/acme/devices/pump-1/commands" in blocks["user gw"]
    assert "topic write fieldgate/+/devices/+/commands" in blocks["user edge"]
    assert "SiteWhere" not in text
    sw = acl_mosquitto.acl_file([dev, gw], agent_username="edge", sitewhere=True)
    sw_blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in sw.split("\n\n") if b.startswith("user")}
    assert "topic write SiteWhere/default/input/json" in sw_blocks["user dev-a"]
    assert "topic write SiteWhere/default/input/protobuf" in sw_blocks["user dev-a"]
    assert "topic read SiteWhere/default/command/dev-a" in sw_blocks["user dev-a"]
    assert "topic read SiteWhere/acme/command/pump-1" in sw_blocks["user gw"]
    assert "topic read SiteWhere/default/command/pump-1" not in sw_blocks["user gw"]
    assert "topic write SiteWhere/+/command/+" in sw_blocks["user edge"]
    assert "topic read SiteWhere/+/input/protobuf" in sw_blocks["user edge"]
    with pytest.raises(ConfigError, match="cannot be written as a Mosquitto ACL"):
        acl_mosquitto.acl_file(
            [new_identity("g", "t", "g", "password-123456", devices=["sim-*"])], agent_username=None
        )
    with pytest.raises(ConfigError, match="no mosquitto_hash"):
        acl_mosquitto.password_file([new_identity("x", "t", "x", "password-123456", mosquitto=False)])


def test_auth_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.auth: .*credentials_file is required"):
        validate(EdgeConfig, {"mqtt": {"auth": {"mode": "password"}}})
    with pytest.raises(ConfigError, match="shorter than 16"):
        validate(
            EdgeConfig,
            {
                "mqtt": {
                    "auth": {
                        "mode": "password",
                        "credentials_file": "c",
                        "enrollment_secrets": {"t": "short"},
                    }
                }
            },
        )
    with pytest.raises(ConfigError, match=r"mqtt: .*configure the embedded broker"):
        validate(
            EdgeConfig, {"mqtt": {"mode": "external", "auth": {"mode": "password", "credentials_file": "c"}}}
        )
    with pytest.raises(ConfigError, match=r"mqtt\.tls: .*certfile and keyfile"):
        validate(EdgeConfig, {"mqtt": {"tls": {"enabled": True}}})
    assert validate(EdgeConfig, {}).mqtt.auth.mode == "none"


def test_an_agent_without_auth_does_not_import_argon2() -> None:
    code = (
        "import sys\n"
        "from fieldgate.edge.config import EdgeConfig\n"
        "from fieldgate.edge.adapters.mqtt import build_mqtt_adapter\n"
        "from fieldgate.edge.adapters.mqtt import dispatch, acl\n"
        "build_mqtt_adapter(EdgeConfig().mqtt, tenants=['default'])\n"
        "print('argon2' in sys.modules, 'fieldgate.edge.adapters.mqtt.auth' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
