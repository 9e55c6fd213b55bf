"""Topic ACLs of authenticated MQTT clients: which topics a :class:`Principal` may use.

Pure decisions, no I/O: the embedded broker's access plugin (:mod:`.auth_plugins`) asks them
for every PUBLISH, SUBSCRIBE and relayed delivery, the dispatcher asks :meth:`Principal.speaks_for`
about every device a SiteWhere payload names, and :mod:`.acl_mosquitto` writes the same rules
as a Mosquitto ACL file.

A device identity (tenant A, device X) may

- publish to ``fieldgate/A/devices/X/events`` and ``.../events/pb``, its link reports to
  ``fieldgate/A/devices/X/link``, and to ``SiteWhere/A/input/json`` and ``.../input/protobuf``
  — whose payload names the device, so the dispatcher refuses a message that names any device
  but X;
- subscribe to (and receive) ``fieldgate/A/devices/X/commands`` and SiteWhere's
  ``SiteWhere/A/command/X`` and ``SiteWhere/A/system/X`` only.

A gateway identity has the same rights for each further device its ``devices`` patterns match
(``"*"``: every device of its tenant; only such a gateway may subscribe to the wildcard filter
``fieldgate/A/devices/+/commands``). An enrolling client (``enroll:<tenant>:<device>``) may only
subscribe to ``fieldgate/<tenant>/devices/<device>/credentials``, where it receives its own
credentials. Nothing else — other tenants, ``#`` filters, ``$SYS``, foreign topics — is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from fieldgate.protocol import topics


def credentials_topic(tenant: str, device: str) -> str:
    return f"{topics.ROOT}/{tenant}/devices/{device}/credentials"


def tenant_commands_filter(tenant: str) -> str:
    return f"{topics.ROOT}/{tenant}/devices/+/commands"


@dataclass(frozen=True)
class Principal:
    """Who an authenticated connection speaks for."""

    username: str
    tenant: str = ""
    device: str = ""
    # Gateways: further devices of ``tenant`` (tokens or shell-style patterns).
    patterns: tuple[str, ...] = ()
    # Logged in with the tenant's enrollment secret: may only fetch its credentials.
    enrolling: bool = False
    # Anonymous client admitted by ``allow_anonymous``: every topic, as without authentication.
    unrestricted: bool = False

    def speaks_for(self, tenant: str, device: str) -> bool:
        if self.unrestricted:
            return True
        if self.enrolling or tenant != self.tenant:
            return False
        return device == self.device or any(fnmatchcase(device, p) for p in self.patterns)

    def describe(self) -> str:
        if self.unrestricted:
            return "anonymous"
        return f"{self.username} ({self.tenant}/{self.device}{', enrolling' if self.enrolling else ''})"


def may_publish(principal: Principal, topic: str) -> bool:
    if principal.unrestricted:
        return True
    if principal.enrolling:
        return False
    link = topics.parse_link_topic(topic)
    if link is not None:
        return principal.speaks_for(*link)
    inbound = topics.parse_inbound(topic)
    if inbound is None:
        return False
    if inbound.format == "sitewhere":
        # The device is named in the payload; the dispatcher checks it (speaks_for).
        return inbound.tenant == principal.tenant
    assert inbound.device is not None
    return principal.speaks_for(inbound.tenant, inbound.device)


def may_subscribe(principal: Principal, topic_filter: str) -> bool:
    if principal.unrestricted:
        return True
    if principal.enrolling:
        return topic_filter == credentials_topic(principal.tenant, principal.device)
    if topic_filter == tenant_commands_filter(principal.tenant):
        return "*" in principal.patterns
    # None for any other filter, wildcards included; SiteWhere's command and system topics count.
    parsed = topics.parse_command_destination(topic_filter)
    return parsed is not None and principal.speaks_for(*parsed)


def may_receive(principal: Principal, topic: str) -> bool:
    """Delivery of a relayed message on ``topic`` (a concrete topic, no wildcards)."""
    if principal.unrestricted:
        return True
    if principal.enrolling:
        return topic == credentials_topic(principal.tenant, principal.device)
    parsed = topics.parse_command_destination(topic)
    return parsed is not None and principal.speaks_for(*parsed)
