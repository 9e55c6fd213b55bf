"""Both buses implement the whole :class:`~fieldgate.cloud.bus.Bus` protocol, with the same
kind of method (coroutine or not) and the same parameters, so no caller branches on which bus
it holds (the CLI's replay, the health checks, the tenant lifecycle)."""

from __future__ import annotations

import inspect

import pytest

from fieldgate.cloud.bus import Bus
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.bus.kafka import KafkaBus

MEMBERS = sorted(
    name for name, value in vars(Bus).items() if not name.startswith("_") and inspect.isfunction(value)
)


def test_the_protocol_names_what_callers_reach_for() -> None:
    assert {"ping", "committed", "reset_offsets", "topic_end_offsets", "publish", "consumer"} <= set(MEMBERS)


@pytest.mark.parametrize("impl", [EmbeddedBus, KafkaBus], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", MEMBERS)
def test_each_bus_implements_each_member(impl: type, name: str) -> None:
    wanted = getattr(Bus, name)
    got = getattr(impl, name, None)
    assert got is not None, f"{impl.__name__} lacks {name}"
    assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(wanted), name
    params = inspect.signature(wanted).parameters
    have = inspect.signature(got).parameters
    for pname, param in params.items():
        assert pname in have, f"{impl.__name__}.{name} lacks parameter {pname}"
        assert have[pname].kind == param.kind, f"{impl.__name__}.{name}({pname})"
