"""Declarative per-tenant rules that turn a device's events into alerts.

* :mod:`.model` — the rule kinds as validated pydantic models (no code strings, no ``eval``);
* :mod:`.engine` — pure evaluation: (rule, its per-device state, an event or the clock) →
  the new state and at most one alert to raise or clear.

The rules in force per tenant (loaded from the state store) are kept for the device state stage
by :mod:`fieldgate.cloud.pipeline.rules`, changed through the APIs by
:mod:`fieldgate.cloud.services.rules`, and in distributed mode published to / watched from
ZooKeeper by :mod:`fieldgate.cloud.zk.rules`; zones are read by
:mod:`fieldgate.cloud.pipeline.zones`. The device state stage
(:mod:`fieldgate.cloud.pipeline.state`) runs them; docs/rules.md describes them for users.
"""
