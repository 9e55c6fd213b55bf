"""The cloud's public APIs: thin adapters over :mod:`fieldgate.cloud.services`.

- :mod:`fieldgate.cloud.api.rest`: the REST API (FastAPI): ``app`` (:func:`create_api
  <fieldgate.cloud.api.rest.app.create_api>` wires everything into one application), ``auth``
  (bearer tokens), ``models`` (request/response shapes and their protobuf conversions),
  ``routes.*`` (the endpoints), ``dashboard`` and ``api_docs`` (the files under ``static/``)
- :mod:`fieldgate.cloud.api.grpc`: the gRPC management services (``server`` registers them)

Nothing imports this package but the composition (``fieldgate.cloud.app``). Importing it
imports nothing heavy; import the submodule you need.
"""
