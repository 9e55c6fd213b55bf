"""ZooKeeper in distributed mode: the configuration source (tenants, settings), its models,
and the rules published to and watched from ZooKeeper."""
