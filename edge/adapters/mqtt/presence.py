"""Which devices an MQTT adapter knows of, and MQTT topic-filter matching. Pure, no I/O.

The adapters remember devices — those seen publishing (to tell the command router when a
wildcard command subscription makes them reachable) and those whose commands wait for the
external broker to come back — in a :class:`DeviceRegistry`, bounded so that a flood of
distinct device names cannot grow memory without limit: beyond ``capacity`` the least recently
seen device is forgotten (policy ``evict-oldest``, counted in ``evicted``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator

from fieldgate.edge.adapters import OnlineCallback
from fieldgate.edge.adapters.mqtt.stats import MqttStats

log = logging.getLogger(__name__)

DeviceKey = tuple[str, str]  # (tenant, device)


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching of a concrete ``topic`` against a subscription filter.

    A filter starting with a wildcard never matches a ``$`` topic (MQTT-4.7.2-1).
    """
    if not is_wildcard(topic_filter):
        return topic_filter == topic
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    flt = topic_filter.split("/")
    top = topic.split("/")
    for i, level in enumerate(flt):
        if level == "#":
            return i == len(flt) - 1
        if i >= len(top):
            return False
        if level != "+" and level != top[i]:
            return False
    return len(flt) == len(top)


class DeviceRegistry:
    """Bounded set of ``(tenant, device)`` with least-recently-seen eviction."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[DeviceKey, None] = OrderedDict()
        self.evicted = 0

    def add(self, tenant: str, device: str) -> bool:
        """Remember a device; True if it was not known before."""
        key = (tenant, device)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
            self.evicted += 1
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[DeviceKey]:
        # A snapshot: callers await between items while the registry keeps changing.
        return iter(list(self._seen))


async def notify_online(callback: OnlineCallback | None, stats: MqttStats, tenant: str, device: str) -> None:
    """Tell the command router a device became reachable. Runs at the top of a broker or client
    task whose errors would otherwise be swallowed: a failure is counted and logged here."""
    if callback is None:
        return
    try:
        await callback(tenant, device)
    except Exception:
        stats.online_callback_errors += 1
        log.exception("on_online(%s, %s) failed", tenant, device)
