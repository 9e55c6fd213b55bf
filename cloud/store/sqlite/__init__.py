"""The SQLite backends of the cloud's stores (one database file per tenant)."""
