"""The fieldgate cloud: pipeline stages that talk only through the bus interface or gRPC.

Stages (:mod:`fieldgate.cloud.pipeline`, each with ``start()``/``stop()``): ``ingest`` (edge
uplink gRPC service) → ``[decoded]`` → ``inbound`` (lookup, enrichment, de-duplication) →
``[enriched]`` → ``persistence`` (event store) → ``[persisted]`` → ``state``, ``connectors``;
``[unregistered]`` → ``registration``; ``[command-invocations]`` → ``delivery`` (to edge
sessions). :mod:`fieldgate.cloud.services` holds the transport-neutral rules that
:mod:`fieldgate.cloud.api` (REST and gRPC) serves; :mod:`fieldgate.cloud.store` the stores,
:mod:`fieldgate.cloud.bus` the bus, :mod:`fieldgate.cloud.domain` pure definitions,
:mod:`fieldgate.cloud.zk` ZooKeeper; :mod:`fieldgate.cloud.app` composes them.
"""
