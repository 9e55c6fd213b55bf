"""Where connectors may send: the operator's network policy for connector targets.

A connector is a tenant admin's way to make the cloud open connections. Without a policy
that is a way into the cloud's own network (its metadata service, its databases, the admin
ports of its neighbours), so by default every target that *resolves* to an address that is
not globally reachable is refused: loopback, link-local, private, unique-local, site-local,
multicast, unspecified, reserved, shared (CGNAT) and documentation ranges — whatever the
spelling (``127.1``, ``2130706433``, ``0x7f.1``, ``[::1]``, ``0.0.0.0``, a name whose records
point there), because the decision is made on the resolved addresses, never on the text.
IPv6 addresses that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) are judged by the IPv4
address they lead to; the local-use NAT64 prefix ``64:ff9b:1::/48`` is inside by definition.

The check runs twice: when a connector is created or replaced (a clear 422 naming the field),
and at every connection (a name may resolve elsewhere by then — DNS rebinding): the webhook
sink resolves the name itself, checks every address and connects to the checked address
(:mod:`~fieldgate.cloud.pipeline.connectors.webhook`); the MQTT and Kafka sinks check before they
connect and check the peer afterwards.

Only the operator can open a hole: ``connectors.allow_networks`` in the cloud configuration
(docs/configuration.md) lists the networks (CIDR) that are allowed although inside — for
on-premises receivers, and for tests whose receivers listen on 127.0.0.1. Tenants cannot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from fieldgate.cloud.domain.connectors.sink import DeliveryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolve(host, port)`` → the addresses a connection to ``host`` could reach.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

#: How long resolving a target's name may take (creation and connect).
RESOLVE_TIMEOUT_S = 10.0

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class TargetRefused(DeliveryError):
    """A connector's target is (or resolves to) an address the policy does not allow, or does
    not resolve at all. Permanent for a delivery: retrying the same name a second later helps
    nothing, so the events are dead-lettered with this reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"target refused: {detail}", permanent=True)
        self.detail = detail


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to by a translation mechanism, or None."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _V4_COMPATIBLE and int(addr) > 1:  # ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF)
    return None


def inside_kind(addr: IPAddress) -> str | None:
    """Why ``addr`` is an inside address (``"loopback"``, ``"private"``, ...); None when it
    is globally reachable unicast."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None:
            kind = inside_kind(inner)
            return None if kind is None else f"{kind} (as {inner})"
        if addr in _NAT64_LOCAL:
            return "local-use NAT64"
        if addr.teredo is not None:
            kind = inside_kind(addr.teredo[1])
            if kind is not None:
                return f"{kind} (Teredo client {addr.teredo[1]})"
        if addr.is_site_local:
            return "site-local"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if isinstance(addr, ipaddress.IPv6Address) and addr in _UNIQUE_LOCAL:
        return "unique-local"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "shared (CGNAT)"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "not globally reachable"
    return None


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address literal (brackets and an IPv6 scope id allowed), else None.
    Only canonical literals: ``127.1`` is a *name* here, and the resolver decides what it
    means (exactly what the connection would do with it)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``getaddrinfo`` gives for a TCP connection to ``host:port``."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise TargetRefused(f"{host!r} does not resolve ({err})") from err
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        addr = parse_address(str(sockaddr[0]))
        if addr is not None and addr not in out:
            out.append(addr)
    return out


def _networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t, strict=True) for t in texts)


@dataclass(frozen=True)
class TargetPolicy:
    """Which addresses connectors may connect to: every globally reachable one, plus the
    operator's ``allow`` networks. ``resolve`` is the name resolver (the system's by default;
    tests give their own to play a name that resolves elsewhere the second time)."""

    allow: tuple[IPNetwork, ...] = ()
    resolve: Resolver = field(default=system_resolve, compare=False)

    @classmethod
    def from_networks(cls, networks: Iterable[str], *, resolve: Resolver = system_resolve) -> TargetPolicy:
        """From CIDR strings (``connectors.allow_networks``, validated at load)."""
        return cls(allow=_networks(networks), resolve=resolve)

    def allowed(self, addr: IPAddress) -> bool:
        candidates: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address):
            inner = embedded_ipv4(addr)
            if inner is not None:
                candidates.append(inner)
        return any(a in net for a in candidates for net in self.allow if a.version == net.version)

    def refusal(self, addr: IPAddress) -> str | None:
        """Why a connection to ``addr`` is refused, or None when it is allowed."""
        kind = inside_kind(addr)
        if kind is None or self.allowed(addr):
            return None
        article = "an" if kind[0] in "aeiou" else "a"
        return f"{addr} is {article} {kind} address (an operator can allow its network in connectors.allow_networks)"

    def check_address(self, addr: IPAddress, host: str = "") -> None:
        """TargetRefused unless ``addr`` is allowed (``host``: the name it came from)."""
        why = self.refusal(addr)
        if why is not None:
            raise TargetRefused(f"{host} → {why}" if host and host != str(addr) else why)

    async def vet(self, host: str, port: int, *, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[IPAddress]:
        """Resolve ``host`` and check every address it gives: the addresses, in resolver order
        (to connect to them and nowhere else), or TargetRefused when any is refused — a name
        with one inside record among outside ones is refused, since which one a connection
        takes is not ours to predict — or when it does not resolve."""
        literal = parse_address(host)
        if literal is not None:
            self.check_address(literal)
            return [literal]
        try:
            async with asyncio.timeout(timeout_s):
                addrs = await self.resolve(host, port)
        except TimeoutError as err:
            raise TargetRefused(f"resolving {host!r} took longer than {timeout_s:g}s") from err
        if not addrs:
            raise TargetRefused(f"{host!r} does not resolve")
        for addr in addrs:
            self.check_address(addr, host)
        return addrs


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` → (host, port); ValueError when malformed."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: invalid port")
    return host, int(port_text)


def kafka_hosts(bootstrap: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a ``bootstrap.servers`` list (``[PROTOCOL://]host:port,…``)."""
    out: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        if "://" in item:
            item = item.split("://", 1)[1]
        out.append(split_host_port(item, 9092))
    if not out:
        raise ValueError("no broker in the bootstrap list")
    return out


def vet_peer(policy: TargetPolicy, sock: socket.socket, host: str) -> None:
    """TargetRefused when a connected socket's peer is not allowed (the check after connect:
    a client library that resolves by itself may have reached another address than ours)."""
    peer = sock.getpeername()
    addr = parse_address(str(peer[0])) if isinstance(peer, tuple) else None
    if addr is None:
        raise TargetRefused(f"{host}: the connection's peer is not an IP address ({peer!r})")
    policy.check_address(addr, host)
