"""Pure parts of the connector target policy (cloud/domain/connectors/targets.py) and of a
connector's progress on the bus (cloud/pipeline/connectors/progress.py)."""

from __future__ import annotations

import ipaddress

import pytest

from fieldgate.cloud.domain.connectors.targets import (
    IPAddress,
    TargetPolicy,
    TargetRefused,
    inside_kind,
    kafka_hosts,
    split_host_port,
)
from fieldgate.cloud.pipeline.connectors.progress import ConnectorProgress
from fieldgate.cloud.store.connectors import ANY_PARTITION

INSIDE = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "fe80::1%2": "link-local",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.0.1": "private",
    "fd12:3456::1": "unique-local",
    "fc00::1": "unique-local",
    "fec0::1": "site-local",
    "224.0.0.251": "multicast",
    "239.1.1.1": "multicast",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    "100.64.0.1": "shared (CGNAT)",
    "240.0.0.1": "private",  # reserved; Python files it under private too
    "::ffff:127.0.0.1": "loopback (as 127.0.0.1)",
    "::ffff:10.1.1.1": "private (as 10.1.1.1)",
    "::127.0.0.1": "loopback (as 127.0.0.1)",
    "64:ff9b::7f00:1": "loopback (as 127.0.0.1)",
    "64:ff9b::a9fe:a9fe": "link-local (as 169.254.169.254)",
    "64:ff9b:1::1": "local-use NAT64",
    "2002:7f00:1::1": "loopback (as 127.0.0.1)",
    "2002:a00:1::": "private (as 10.0.0.1)",
}
OUTSIDE = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("text", "kind"), sorted(INSIDE.items()))
def test_inside_addresses_are_named(text: str, kind: str) -> None:
    addr = ipaddress.ip_address(text)
    assert inside_kind(addr) == kind
    why = TargetPolicy().refusal(addr)
    assert why is not None and kind in why and "connectors.allow_networks" in why


@pytest.mark.parametrize("text", OUTSIDE)
def test_public_addresses_pass(text: str) -> None:
    assert TargetPolicy().refusal(ipaddress.ip_address(text)) is None


def test_allowed_networks_open_exactly_themselves() -> None:
    policy = TargetPolicy.from_networks(["127.0.0.0/8", "10.20.0.0/16"])
    ok = ["127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "10.20.1.1", "64:ff9b::a14:101"]
    for text in ok:
        assert policy.refusal(ipaddress.ip_address(text)) is None, text
    for text in ["::1", "10.21.0.1", "169.254.169.254", "192.168.1.1"]:
        assert policy.refusal(ipaddress.ip_address(text)) is not None, text
    with pytest.raises(ValueError):
        TargetPolicy.from_networks(["10.0.0.1/8"])  # host bits: a typo, not a network


async def test_vet_judges_every_resolved_address() -> None:
    answers: dict[str, list[str]] = {
        "mixed.example": ["93.184.215.14", "10.0.0.7"],
        "public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        "nothing.example": [],
    }

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers[host]]

    policy = TargetPolicy(resolve=resolve)
    assert [str(a) for a in await policy.vet("public.example", 443)] == answers["public.example"]
    with pytest.raises(TargetRefused, match=r"mixed\.example → 10\.0\.0\.7 is a private address"):
        await policy.vet("mixed.example", 443)
    with pytest.raises(TargetRefused, match="does not resolve"):
        await policy.vet("nothing.example", 443)
    with pytest.raises(TargetRefused, match="loopback"):
        await policy.vet("[::1]", 80)  # a literal is not resolved


async def test_the_system_resolver_sees_through_numeric_spellings() -> None:
    policy = TargetPolicy()
    for spelling in ["127.1", "2130706433", "0x7f.1", "0177.0.0.1", "0"]:
        with pytest.raises(TargetRefused, match=r"loopback|unspecified"):
            await policy.vet(spelling, 80)


def test_host_port_parsing() -> None:
    assert split_host_port("h:1", 9) == ("h", 1)
    assert split_host_port("h", 9) == ("h", 9)
    assert split_host_port("[::1]:9092", 9) == ("::1", 9092)
    assert split_host_port("[::1]", 9) == ("::1", 9)
    for bad in ["[::1", "h:0", "h:x", ":9", "[::1]x"]:
        with pytest.raises(ValueError):
            split_host_port(bad, 9)
    assert kafka_hosts("a:1, SASL_SSL://b:2,[::1]") == [("a", 1), ("b", 2), ("::1", 9092)]


def test_fieldgate_up_takes_the_operator_networks() -> None:
    from fieldgate.cli import build_parser

    ns = build_parser().parse_args(["up", "--allow-connector-network", "127.0.0.0/8"])
    assert ns.allow_connector_network == ["127.0.0.0/8"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--allow-connector-network", "127.0.0.1/8"])


def test_progress_positions() -> None:
    p = ConnectorProgress({ANY_PARTITION: 0, 1: 50})
    assert p.next(1, 80) == 50  # stored start
    assert p.next(2, 80) == 0  # a partition without a row: the stored default
    legacy = ConnectorProgress()
    assert legacy.next(0, 80) == 80  # no start recorded: where the stage reads
    p.passed(1, 50)
    p.add_pending(1, 50, 2)
    p.passed(1, 51)  # filtered out
    p.passed(1, 52)
    p.add_pending(1, 52, 1)
    assert p.position(1) == 50 and p.unsaved() == {2: 0}  # 1: still where it was stored
    p.saved({1: 50, 2: 0})
    p.settle(1, 50)
    assert p.position(1) == 50  # one of its two events is still out
    p.settle(1, 50)
    assert p.position(1) == 52 and p.unsaved() == {1: 52}
    p.settle(1, 52)
    assert p.position(1) == 53
    p.rewind(1, 40)  # a replay
    assert p.next(1, 40) == 40
    p.catch_up({1: 60, ANY_PARTITION: 0})  # another replica went further
    assert p.next(1, 40) == 60
