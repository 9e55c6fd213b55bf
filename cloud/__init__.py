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

# One module, one name: the folder is part of the package through the link fieldgate/cloud. From the
# repository's root (on sys.path under pytest) it would import a second time under another
# name, with its own copies of every class and registry, so that is refused.
if __name__ != "fieldgate.cloud":
    raise ImportError(
        f"{__name__!r} is the repository's cloud/ folder: import it as fieldgate.cloud"
        " (fieldgate/cloud links to it; README.md, Where things are)",
        name=__name__,
    )
