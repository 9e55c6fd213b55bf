"""Pure domain definitions used by several layers of the cloud: rule models and their
evaluation, connector definitions and filters, batch and schedule models. No I/O and no
imports of api, services, pipeline or store."""
