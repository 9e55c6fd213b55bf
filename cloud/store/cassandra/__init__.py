"""The Cassandra backends of the cloud's stores (one keyspace per tenant), their session
and keyspace helpers."""
