"""The MQTT topic contract (docs/protocols/mqtt.md): which topics mean what."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldgate.protocol.topics import (
    SUBSCRIPTIONS,
    InboundTopic,
    commands_topic,
    events_topic,
    parse_commands_topic,
    parse_inbound,
)

tokens = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("fieldgate/default/devices/dev-1/events", InboundTopic("default", "dev-1", "json", "json")),
        (
            "fieldgate/default/devices/dev-1/events/pb",
            InboundTopic("default", "dev-1", "protobuf", "protobuf"),
        ),
        ("fieldgate/acme/devices/a.b_c:d-9/events", InboundTopic("acme", "a.b_c:d-9", "json", "json")),
        ("SiteWhere/default/input/json", InboundTopic("default", None, "sitewhere", "sitewhere")),
        (
            "SiteWhere/default/input/protobuf",
            InboundTopic("default", None, "sitewhere", "sitewhere-protobuf"),
        ),
    ],
)
def test_inbound_topics_name_tenant_device_and_format(topic: str, expected: InboundTopic) -> None:
    assert parse_inbound(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "fieldgate/default/devices/dev-1/commands",  # the edge's own publications
        "fieldgate/default/devices/dev-1/events/xml",
        "fieldgate/default/devices/dev-1/events/pb/extra",
        "fieldgate/default/device/dev-1/events",
        "fieldgate/default/devices//events",
        "fieldgate//devices/dev-1/events",
        "fieldgate/default/devices/-dev/events",  # must start with a letter or digit
        "fieldgate/default/devices/dev 1/events",
        "Fieldgate/default/devices/dev-1/events",
        "/fieldgate/default/devices/dev-1/events",
        "SiteWhere/default/input/xml",
        "SiteWhere/default/input/json/x",
        "SiteWhere//input/json",
        "sitewhere/default/input/json",
        "fieldgate/" + "t" * 129 + "/devices/dev-1/events",
        "",
    ],
)
def test_other_topics_are_not_inbound(topic: str) -> None:
    assert parse_inbound(topic) is None


@given(tenant=tokens, device=tokens)
def test_events_topic_round_trips(tenant: str, device: str) -> None:
    assert parse_inbound(events_topic(tenant, device)) == InboundTopic(tenant, device, "json", "json")
    assert parse_inbound(events_topic(tenant, device) + "/pb") == InboundTopic(
        tenant, device, "protobuf", "protobuf"
    )


@given(tenant=tokens, device=tokens)
def test_commands_topic_round_trips(tenant: str, device: str) -> None:
    assert parse_commands_topic(commands_topic(tenant, device)) == (tenant, device)


def test_commands_topic_is_the_documented_one() -> None:
    assert commands_topic("default", "dev-1") == "fieldgate/default/devices/dev-1/commands"
    assert parse_commands_topic("fieldgate/default/devices/dev-1/events") is None


def _matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching ('+' one level, '#' the rest)."""
    pat, parts = pattern.split("/"), topic.split("/")
    for index, level in enumerate(pat):
        if level == "#":
            return True
        if index >= len(parts) or (level != "+" and level != parts[index]):
            return False
    return len(pat) == len(parts)


@given(tenant=tokens, device=tokens, fmt=st.sampled_from(["", "/pb"]))
def test_every_inbound_topic_is_covered_by_exactly_one_subscription(
    tenant: str, device: str, fmt: str
) -> None:
    topic = events_topic(tenant, device) + fmt
    assert sum(_matches(pattern, topic) for pattern in SUBSCRIPTIONS) == 1
    assert sum(_matches(pattern, f"SiteWhere/{tenant}/input/json") for pattern in SUBSCRIPTIONS) == 1
    assert not any(_matches(pattern, commands_topic(tenant, device)) for pattern in SUBSCRIPTIONS)


def test_sitewhere_1x_topics_belong_to_the_configured_tenant_only() -> None:
    from fieldgate.protocol import topics

    assert topics.parse_inbound("SiteWhere/input/protobuf") is None
    assert topics.parse_inbound("SiteWhere/input/protobuf", "acme") == InboundTopic(
        "acme", None, "sitewhere", "sitewhere-protobuf"
    )
    assert topics.parse_inbound("SiteWhere/input/json", "acme") == InboundTopic(
        "acme", None, "sitewhere", "sitewhere"
    )
    assert topics.parse_inbound("SiteWhere/input/xml", "acme") is None
    assert topics.parse_command_destination("SiteWhere/commands/ard-1") is None
    assert topics.parse_command_destination("SiteWhere/commands/ard-1", "acme") == ("acme", "ard-1")
    assert topics.parse_command_destination("SiteWhere/system/ard-1", "acme") == ("acme", "ard-1")
    assert topics.parse_command_destination("SiteWhere/commands/+", "acme") is None
    assert topics.parse_command_destination("SiteWhere/acme/command/sw-1") == ("acme", "sw-1")
    assert topics.parse_command_destination("SiteWhere/acme/system/sw-1") == ("acme", "sw-1")
    assert topics.parse_command_destination("SiteWhere/acme/other/sw-1") is None
