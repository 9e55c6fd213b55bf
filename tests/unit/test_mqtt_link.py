"""The MQTT link bookkeeping (edge/adapters/mqtt/link.py) and the link topic contract: which
clients serve which device, and the transitions the HealthBoard forwards."""

from __future__ import annotations

from fieldgate.edge.adapters.mqtt.link import LinkTracker, ReportedLinks
from fieldgate.edge.health import HealthBoard
from fieldgate.protocol import topics


def recorded() -> tuple[HealthBoard, list[tuple[str, bool]]]:
    board = HealthBoard()
    changes: list[tuple[str, bool]] = []
    board.on_change = lambda tenant, device, up: changes.append((device, up))
    return board, changes


def test_a_device_is_connected_while_any_client_serves_it() -> None:
    board, changes = recorded()
    links = LinkTracker(board)
    links.opened("gw")
    links.opened("dev")
    links.spoke("gw", "t", "a")
    links.spoke("gw", "t", "b")
    links.bind("dev", "t", "a")  # a second client of a: no new transition
    assert changes == [("a", True), ("b", True)]
    assert links.clients_of("t", "a") == {"gw", "dev"}
    links.closed("gw")
    assert changes[2:] == [("b", False)]  # a is still served by dev
    links.reported("dev", "t", "a", False)
    assert changes[3:] == [("a", False)] and links.bindings == 0
    links.reported("dev", "t", "a", True)
    assert changes[4:] == [("a", True)]
    links.close_all()
    assert changes[5:] == [("a", False)]


def test_a_takeover_keeps_the_devices_and_a_gone_client_binds_nothing() -> None:
    board, changes = recorded()
    links = LinkTracker(board)
    links.opened("c")
    links.bind("c", "t", "d")
    links.opened("c")  # the same client id connects again ...
    links.closed("c")  # ... and its old connection ends after that
    assert changes == [("d", True)] and links.connected("t", "d")
    links.closed("c")
    assert changes == [("d", True), ("d", False)]
    links.bind("c", "t", "d")  # a late event of the closed connection
    links.spoke("c", "t", "d")
    assert changes == [("d", True), ("d", False)] and not links.connected("t", "d")
    links.spoke(None, "t", "d")  # no client known: nothing to bind
    assert links.bindings == 0


def test_bindings_are_bounded() -> None:
    board, changes = recorded()
    links = LinkTracker(board, max_bindings=2)
    links.opened("c")
    for device in ("a", "b", "c"):
        links.bind("c", "t", device)
    assert links.bindings == 2 and links.untracked == 1 and len(changes) == 2
    links.closed("c")
    assert links.bindings == 0 and [up for _, up in changes] == [True, True, False, False]


def test_reported_links_follow_the_devices_own_reports() -> None:
    board, changes = recorded()
    links = ReportedLinks(board)
    # A retained will read after a restart of the agent: reported although never "connected".
    links.reported(None, "t", "a", False)
    links.spoke(None, "t", "b")  # a (possibly late) message proves nothing about now
    links.reported(None, "t", "a", False)
    links.reported(None, "t", "a", True)
    links.reported(None, "t", "a", False)
    assert changes == [("a", False), ("a", True), ("a", False)]


def test_link_topics() -> None:
    assert topics.link_topic("default", "d-1") == "fieldgate/default/devices/d-1/link"
    assert topics.parse_link_topic("fieldgate/default/devices/d-1/link") == ("default", "d-1")
    for bad in ("fieldgate/default/devices/+/link", "fieldgate/default/devices/d-1/link/x", "x/y"):
        assert topics.parse_link_topic(bad) is None
    assert topics.LINK_FILTER in topics.SUBSCRIPTIONS
