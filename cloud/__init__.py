"""The fieldgate cloud: pipeline stages that talk only through the bus interface or gRPC.

Stages (each a module with ``start()``/``stop()``): ``ingest`` (edge uplink gRPC service) →
``[decoded]`` → ``inbound`` (lookup, enrichment, de-duplication) → ``[enriched]`` →
``persistence`` (event store) → ``[persisted]``; ``[unregistered]`` → ``registration``;
``[command-invocations]`` → ``commands`` (delivery to edge sessions). ``api`` serves REST.
"""
