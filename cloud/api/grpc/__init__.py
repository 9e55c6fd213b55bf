"""The gRPC management adapter: servicers over :mod:`fieldgate.cloud.services` (devices,
events, commands, site, tenants, customers, rules, states). No module here imports
:mod:`fieldgate.cloud.api.rest`."""
