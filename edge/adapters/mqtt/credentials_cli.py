"""``fieldgate mqtt ...``: manage the MQTT credentials file and write Mosquitto's files from it.

    fieldgate mqtt credentials add --file F --tenant T --device D [--username U] [--gateway-for P ...]
    fieldgate mqtt credentials remove --file F USERNAME
    fieldgate mqtt credentials list --file F
    fieldgate mqtt mosquitto-files --credentials F --out-dir DIR [--agent-username edge] [--sitewhere]

``add`` makes a random password (or reads one line from standard input with
``--password-stdin``), stores only its hashes and prints it once. A running edge agent re-reads
the file at the next CONNECT.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fieldgate.edge.adapters.mqtt import acl_mosquitto
from fieldgate.edge.adapters.mqtt.credentials import (
    CredentialStore,
    generate_password,
    mosquitto_hash,
    new_identity,
)
from fieldgate.errors import ConfigError


def _read_password(ns: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated?)"""
    if ns.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 12:
            raise ConfigError("--password-stdin: the password must have at least 12 characters")
        return password, False
    return generate_password(), True


def _cmd_add(ns: argparse.Namespace) -> int:
    store = CredentialStore.load(Path(ns.file), missing_ok=True)
    username = ns.username or ns.device
    password, generated = _read_password(ns)
    identity = new_identity(
        username, ns.tenant, ns.device, password, devices=ns.gateway_for or (), mosquitto=not ns.no_mosquitto
    )
    if ns.replace:
        old = store.get(username)
        if old is not None and (old.tenant, old.device) != (identity.tenant, identity.device):
            raise ConfigError(
                f"--replace: {username!r} is {old.tenant}/{old.device}, not {ns.tenant}/{ns.device}"
            )
    store.add(identity, replace=ns.replace and store.get(username) is not None)
    store.save()
    print(f"{ns.file}: {username} ({ns.tenant}/{ns.device}) {'replaced' if ns.replace else 'added'}")
    if generated:
        print(f"password: {password}")
        print("(shown once; only its hashes are stored)")
    return 0


def _cmd_remove(ns: argparse.Namespace) -> int:
    store = CredentialStore.load(Path(ns.file))
    identity = store.remove(ns.username)
    store.save()
    print(f"{ns.file}: {identity.username} ({identity.tenant}/{identity.device}) removed")
    return 0


def _cmd_list(ns: argparse.Namespace) -> int:
    store = CredentialStore.load(Path(ns.file), missing_ok=True)
    print(f"{'username':<32} {'tenant':<16} {'device':<24} {'gateway for':<20} flags")
    for i in store:
        flags = ",".join(
            f
            for f, on in (
                ("enrolled", i.enrolled),
                ("unconfirmed", not i.confirmed),
                ("no-mosquitto", i.mosquitto_hash is None),
            )
            if on
        )
        print(
            f"{i.username:<32} {i.tenant:<16} {i.device:<24} {','.join(i.devices) or '-':<20} {flags or '-'}"
        )
    return 0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _cmd_mosquitto_files(ns: argparse.Namespace) -> int:
    store = CredentialStore.load(Path(ns.credentials))
    identities = list(store)
    agent: tuple[str, str] | None = None
    agent_password: str | None = None
    if ns.agent_username:
        if ns.agent_password_stdin:
            agent_password = sys.stdin.readline().rstrip("\n")
        else:
            agent_password = generate_password()
        agent = (ns.agent_username, mosquitto_hash(agent_password))
    passwd = acl_mosquitto.password_file(identities, agent)
    acl = acl_mosquitto.acl_file(identities, agent_username=ns.agent_username, sitewhere=ns.sitewhere)
    out = Path(ns.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_private(out / "passwd", passwd)
    _write_private(out / "acl", acl)
    print(f"wrote {out / 'passwd'} ({len(identities) + (agent is not None)} users) and {out / 'acl'}")
    print("add to mosquitto.conf (globally, or to the listener with per_listener_settings true):")
    print(
        f"  allow_anonymous false\n  password_file {out.resolve() / 'passwd'}\n  acl_file {out.resolve() / 'acl'}"
    )
    if agent is not None and not ns.agent_password_stdin:
        print(f"edge agent: mqtt.username {ns.agent_username}, mqtt.password {agent_password} (shown once)")
    return 0


def add_cli_arguments(mqtt: argparse.ArgumentParser) -> None:
    """The ``mqtt`` command's subcommands (called from :mod:`fieldgate.cli`)."""
    sub = mqtt.add_subparsers(dest="mqtt_cmd", required=True)
    cred = sub.add_parser("credentials", help="device credentials for the embedded broker (docs/security.md)")
    csub = cred.add_subparsers(dest="credentials_cmd", required=True)

    add = csub.add_parser("add", help="add a device (or gateway) identity; prints its new password once")
    add.add_argument("--file", required=True, help="the credentials file (mqtt.auth.credentials_file)")
    add.add_argument("--tenant", required=True)
    add.add_argument("--device", required=True, help="the device this identity speaks for")
    add.add_argument("--username", help="login name (default: the device token)")
    add.add_argument(
        "--gateway-for",
        action="append",
        metavar="DEVICE",
        help="gateway: another device of the tenant it may act for (token or pattern such as 'sim-*', "
        "'*' = all); repeat for more",
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--no-mosquitto", action="store_true", help="store no Mosquitto ($7$) hash")
    add.add_argument("--replace", action="store_true", help="replace an existing identity's password")
    add.set_defaults(func=_cmd_add)

    rm = csub.add_parser("remove", help="remove an identity (new logins with it are refused)")
    rm.add_argument("--file", required=True)
    rm.add_argument("username")
    rm.set_defaults(func=_cmd_remove)

    ls = csub.add_parser("list", help="list the identities (no secrets)")
    ls.add_argument("--file", required=True)
    ls.set_defaults(func=_cmd_list)

    mf = sub.add_parser(
        "mosquitto-files",
        help="write a Mosquitto password file and ACL file from the credentials file "
        "(docs/operations/mosquitto.md)",
    )
    mf.add_argument("--credentials", required=True, help="the credentials file")
    mf.add_argument("--out-dir", required=True, help="directory for passwd and acl")
    mf.add_argument(
        "--agent-username",
        default="fieldgate-edge",
        help="the edge agent's Mosquitto user (reads all events, writes commands); '' for none",
    )
    mf.add_argument(
        "--agent-password-stdin", action="store_true", help="read the agent's password from stdin"
    )
    mf.add_argument(
        "--sitewhere",
        action="store_true",
        help="also let devices write SiteWhere/<tenant>/input/json (Mosquitto cannot check the "
        "payload's deviceToken: such a device can speak for any device of its tenant)",
    )
    mf.set_defaults(func=_cmd_mosquitto_files)
