"""The cloud's bus-driven stages: ingest (the edge uplink gRPC service) → [decoded] →
inbound → [enriched] → persistence → [persisted] → state, connectors; [unregistered] →
registration; [command-invocations] → delivery. Stages talk only through the bus and the
stores, never to each other."""
