"""Outbound connectors: a tenant's persisted events forwarded to the outside world.

* :mod:`~fieldgate.cloud.connectors.models` — the definitions (webhook, mqtt, kafka; filter;
  delivery knobs), validated at the API;
* :mod:`~fieldgate.cloud.connectors.events` — the JSON document of an event, the filter
  interface;
* :mod:`~fieldgate.cloud.connectors.webhook`, ``mqtt``, ``kafka`` — one sink per kind;
* :mod:`~fieldgate.cloud.connectors.runner` — one connector's bounded queue, retries and dead
  letters;
* :mod:`~fieldgate.cloud.connectors.stage` — the ``connectors`` service: [persisted] → runners,
  commits at the watermark;
* :mod:`~fieldgate.cloud.connectors.store` — definitions and dead letters on SQLite/Cassandra.

docs/connectors.md describes them for users.
"""
