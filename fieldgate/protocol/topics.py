"""The MQTT topic contract (docs/protocols/mqtt.md). Pure functions, no I/O.

Devices publish to ``fieldgate/<tenant>/devices/<device>/events`` (JSON) or
``.../events/pb`` (a protobuf ``EventBatch``) and receive commands on
``fieldgate/<tenant>/devices/<device>/commands``. SiteWhere devices publish JSON to
``SiteWhere/<tenant>/input/json`` or SiteWhere's protobuf messages to
``SiteWhere/<tenant>/input/protobuf`` and name their device inside the payload. A device (or the
gateway speaking for it) may report its own link on ``fieldgate/<tenant>/devices/<device>/link``
— ``connected`` after connecting, ``disconnected`` as its will message — which is how an edge
behind an external broker learns that a device went away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "fieldgate"
EVENTS_FILTER = f"{ROOT}/+/devices/+/events"
EVENTS_PB_FILTER = f"{ROOT}/+/devices/+/events/pb"
SITEWHERE_FILTER = "SiteWhere/+/input/json"
SITEWHERE_PB_FILTER = "SiteWhere/+/input/protobuf"
SITEWHERE_FILTERS = (SITEWHERE_FILTER, SITEWHERE_PB_FILTER)
# SiteWhere 1.x's default topics had no tenant level (SiteWhere/input/protobuf in the Arduino and
# Java agents, "SiteWhere/commands/%s" / "SiteWhere/system/%s" in its hardware-id-topic-extractor);
# an edge serves them for one configured tenant (mqtt.sitewhere_1x_tenant).
SITEWHERE_1X_FILTERS = ("SiteWhere/input/json", "SiteWhere/input/protobuf")
LINK_FILTER = f"{ROOT}/+/devices/+/link"
SUBSCRIPTIONS = (EVENTS_FILTER, EVENTS_PB_FILTER, SITEWHERE_FILTER, SITEWHERE_PB_FILTER, LINK_FILTER)
# Payloads of the link topic (exact text, no JSON): a will message is static, so is the contract.
LINK_CONNECTED = "connected"
LINK_DISCONNECTED = "disconnected"

# Tenant and device tokens: what fits in a topic level and a URL path segment.
TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# The payload family, recorded on every event (FORMAT_METADATA_KEY) and named in a tenant's
# ``decoders``: "sitewhere" covers both of SiteWhere's encodings.
Format = Literal["json", "protobuf", "sitewhere"]
# The codec that decodes a topic's payloads (one per Format, two for SiteWhere).
Codec = Literal["json", "protobuf", "sitewhere", "sitewhere-protobuf"]

# Event metadata key under which the MQTT adapter records the payload format an event was
# decoded from (set by the edge, overwriting any device-supplied value), so the cloud can
# apply a tenant's allowed ``decoders`` (docs/operations/zookeeper.md).
FORMAT_METADATA_KEY = "fieldgate.format"


@dataclass(frozen=True, slots=True)
class InboundTopic:
    tenant: str
    device: str | None  # None for SiteWhere topics: the payload names the device
    format: Format
    codec: Codec


def parse_inbound(topic: str, sitewhere_1x_tenant: str | None = None) -> InboundTopic | None:
    """The meaning of an inbound topic, or None if it is not one of fieldgate's. SiteWhere 1.x's
    tenant-less ``SiteWhere/input/{json,protobuf}`` belong to ``sitewhere_1x_tenant`` (if any)."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "SiteWhere" and parts[1] == "input" and sitewhere_1x_tenant:
        if parts[2] not in ("json", "protobuf"):
            return None
        codec1: Codec = "sitewhere" if parts[2] == "json" else "sitewhere-protobuf"
        return InboundTopic(sitewhere_1x_tenant, None, "sitewhere", codec1)
    if len(parts) in (5, 6) and parts[0] == ROOT and parts[2] == "devices" and parts[4] == "events":
        if len(parts) == 6 and parts[5] != "pb":
            return None
        tenant, device = parts[1], parts[3]
        if not (TOKEN_RE.match(tenant) and TOKEN_RE.match(device)):
            return None
        fmt: Format = "protobuf" if len(parts) == 6 else "json"
        return InboundTopic(tenant, device, fmt, fmt)
    if len(parts) == 4 and parts[0] == "SiteWhere" and parts[2] == "input":
        if parts[3] not in ("json", "protobuf") or not TOKEN_RE.match(parts[1]):
            return None
        codec: Codec = "sitewhere" if parts[3] == "json" else "sitewhere-protobuf"
        return InboundTopic(parts[1], None, "sitewhere", codec)
    return None


def events_topic(tenant: str, device: str) -> str:
    return f"{ROOT}/{tenant}/devices/{device}/events"


def commands_topic(tenant: str, device: str) -> str:
    return f"{ROOT}/{tenant}/devices/{device}/commands"


def parse_commands_topic(topic: str) -> tuple[str, str] | None:
    """``(tenant, device)`` of a commands topic, or None."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == ROOT and parts[2] == "devices" and parts[4] == "commands":
        if TOKEN_RE.match(parts[1]) and TOKEN_RE.match(parts[3]):
            return parts[1], parts[3]
    return None


def sitewhere_command_topic(tenant: str, device: str) -> str:
    """Where SiteWhere 2.x/3.x firmware takes its device type's commands (SiteWhere's default
    ``SiteWhere/${tenant}/command/${device}``, sitewhere-java-agent ``Agent.java``)."""
    return f"SiteWhere/{tenant}/command/{device}"


def sitewhere_system_topic(tenant: str, device: str) -> str:
    """Where SiteWhere 2.x/3.x firmware takes system messages (registration acknowledgements):
    SiteWhere's default ``SiteWhere/${tenant}/system/${device}``."""
    return f"SiteWhere/{tenant}/system/{device}"


def sitewhere_1x_command_topic(device: str) -> str:
    """SiteWhere 1.x's default command topic (``commandTopicExpr`` ``SiteWhere/commands/%s``)."""
    return f"SiteWhere/commands/{device}"


def sitewhere_1x_system_topic(device: str) -> str:
    """SiteWhere 1.x's default system topic (``systemTopicExpr`` ``SiteWhere/system/%s``)."""
    return f"SiteWhere/system/{device}"


def parse_sitewhere_device_topic(
    topic: str, sitewhere_1x_tenant: str | None = None
) -> tuple[str, str, Literal["command", "system"]] | None:
    """``(tenant, device, "command" | "system")`` of a SiteWhere device topic, or None. The 1.x
    topics (``SiteWhere/commands/<device>``, ``SiteWhere/system/<device>``) count only with
    ``sitewhere_1x_tenant``."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "SiteWhere" and parts[1] in ("commands", "system"):
        if sitewhere_1x_tenant and TOKEN_RE.match(parts[2]):
            return sitewhere_1x_tenant, parts[2], "command" if parts[1] == "commands" else "system"
        return None
    if len(parts) == 4 and parts[0] == "SiteWhere" and parts[2] in ("command", "system"):
        if TOKEN_RE.match(parts[1]) and TOKEN_RE.match(parts[3]):
            return parts[1], parts[3], "command" if parts[2] == "command" else "system"
    return None


def parse_command_destination(topic: str, sitewhere_1x_tenant: str | None = None) -> tuple[str, str] | None:
    """``(tenant, device)`` of any topic a device takes commands on: fieldgate's commands topic
    or SiteWhere's command or system topic (no wildcards). None for anything else."""
    parsed = parse_commands_topic(topic)
    if parsed is not None:
        return parsed
    sitewhere = parse_sitewhere_device_topic(topic, sitewhere_1x_tenant)
    return None if sitewhere is None else (sitewhere[0], sitewhere[1])


def link_topic(tenant: str, device: str) -> str:
    return f"{ROOT}/{tenant}/devices/{device}/link"


def parse_link_topic(topic: str) -> tuple[str, str] | None:
    """``(tenant, device)`` of a link topic, or None."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == ROOT and parts[2] == "devices" and parts[4] == "link":
        if TOKEN_RE.match(parts[1]) and TOKEN_RE.match(parts[3]):
            return parts[1], parts[3]
    return None
