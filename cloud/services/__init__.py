"""Transport-neutral services of the cloud: the rules the REST and gRPC APIs both call
(management, customers, fleet queries, commands, tenants, users, access, rules, batch and
schedules, connectors' administration, the live hub). They use the stores and the bus, never
``fieldgate.cloud.api``."""
