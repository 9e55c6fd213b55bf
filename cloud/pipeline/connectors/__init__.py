"""Outbound connectors: a tenant's persisted events forwarded to the outside world.

* :mod:`~fieldgate.cloud.domain.connectors.models` — the definitions (webhook, mqtt, kafka;
  filter; delivery knobs), validated at the API;
* :mod:`~fieldgate.cloud.domain.connectors.events` — the JSON document of an event, the filter
  interface; :mod:`~fieldgate.cloud.domain.connectors.sink` — the sink interface;
  :mod:`~fieldgate.cloud.domain.connectors.targets` — where connectors may not reach;
* :mod:`~fieldgate.cloud.pipeline.connectors.webhook`, ``mqtt``, ``kafka`` — one sink per kind;
* :mod:`~fieldgate.cloud.pipeline.connectors.runner` — one connector's bounded queue, retries
  and dead letters;
* :mod:`~fieldgate.cloud.pipeline.connectors.stage` — the ``connectors`` service: [persisted] →
  runners, commits at the watermark;
* :mod:`~fieldgate.cloud.store.connectors` — definitions and dead letters on SQLite/Cassandra;
  :mod:`~fieldgate.cloud.services.connectors` — their administration for the APIs.

docs/connectors.md describes them for users.
"""
