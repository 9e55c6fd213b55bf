"""The credentials file as Mosquitto's ``password_file`` and ``acl_file`` (external mode).

``fieldgate mqtt mosquitto-files`` writes both from the same identities the embedded broker
uses, with the rules of :mod:`.acl`: each device may write its own events and link topics (the
latter also as its will) and read its own commands topic; a gateway's extra devices become more lines (``"*"`` becomes ``+``, the whole
tenant; other shell patterns cannot be expressed in Mosquitto's ACL syntax and are refused). The
edge agent gets a user of its own that reads every device's events and writes their commands.

Mosquitto cannot look into a payload, so the SiteWhere topic (whose payload names the device)
is granted only when asked for (``sitewhere=True``): a device allowed to write
``SiteWhere/<tenant>/input/json`` (and ``.../protobuf``) can then send events for any device of
its tenant. It also reads its SiteWhere command topic ``SiteWhere/<tenant>/command/<device>``,
which the agent writes (``mqtt.sitewhere_command_tenants``).

Pure text rendering: no I/O here (the CLI writes the files).
"""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate.edge.adapters.mqtt.acl import tenant_commands_filter
from fieldgate.edge.adapters.mqtt.credentials import Identity
from fieldgate.errors import ConfigError
from fieldgate.protocol import topics


def _devices(identity: Identity) -> list[str]:
    """The device levels of the topics ``identity`` may use (``+`` for a whole tenant)."""
    if "*" in identity.devices:
        return ["+"]
    levels = [identity.device]
    for pattern in identity.devices:
        if any(c in pattern for c in "*?[]"):
            raise ConfigError(
                f"identity {identity.username!r}: devices pattern {pattern!r} cannot be written as a "
                "Mosquitto ACL (only exact device tokens or '*')"
            )
        if pattern not in levels:
            levels.append(pattern)
    return levels


def password_file(identities: Iterable[Identity], agent: tuple[str, str] | None = None) -> str:
    """``username:$7$...`` lines; ``agent`` is the edge agent's (username, mosquitto hash)."""
    lines = []
    if agent is not None:
        lines.append(f"{agent[0]}:{agent[1]}")
    for identity in identities:
        if identity.mosquitto_hash is None:
            raise ConfigError(
                f"identity {identity.username!r} has no mosquitto_hash: issue its password again with "
                "`fieldgate mqtt credentials add --replace` (the password itself is not stored)"
            )
        lines.append(f"{identity.username}:{identity.mosquitto_hash}")
    return "\n".join(lines) + "\n"


def acl_file(identities: Iterable[Identity], *, agent_username: str | None, sitewhere: bool = False) -> str:
    out = ["# written by `fieldgate mqtt mosquitto-files`; rules: docs/security.md", ""]
    if agent_username is not None:
        out += [
            f"user {agent_username}",
            f"topic read {topics.EVENTS_FILTER}",
            f"topic read {topics.EVENTS_PB_FILTER}",
            f"topic read {topics.LINK_FILTER}",
            *([f"topic read {f}" for f in topics.SITEWHERE_FILTERS] if sitewhere else []),
            f"topic write {topics.ROOT}/+/devices/+/commands",
            *(["topic write SiteWhere/+/command/+"] if sitewhere else []),
            "",
        ]
    for identity in identities:
        out.append(f"user {identity.username}")
        levels = _devices(identity)
        for device in levels:
            out.append(f"topic write {topics.ROOT}/{identity.tenant}/devices/{device}/events")
            out.append(f"topic write {topics.ROOT}/{identity.tenant}/devices/{device}/events/pb")
            out.append(f"topic write {topics.ROOT}/{identity.tenant}/devices/{device}/link")
        if levels == ["+"]:
            out.append(f"topic read {tenant_commands_filter(identity.tenant)}")
        else:
            out += [f"topic read {topics.commands_topic(identity.tenant, d)}" for d in levels]
        if sitewhere:
            out.append(f"topic write SiteWhere/{identity.tenant}/input/json")
            out.append(f"topic write SiteWhere/{identity.tenant}/input/protobuf")
            out += [f"topic read {topics.sitewhere_command_topic(identity.tenant, d)}" for d in levels]
        out.append("")
    return "\n".join(out)
