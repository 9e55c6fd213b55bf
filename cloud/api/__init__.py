"""The cloud's public APIs: REST (FastAPI) and the gRPC management services share one core.

- ``management``: device types, devices, assignments and event queries as plain async methods
  (the rules live here once; no framework imports)
- ``users``: the user store (scrypt password hashes) and ``auth``: bearer tokens (JWT)
- ``models``: the REST request/response shapes and their protobuf conversions
- ``routes_*``: the REST endpoints; ``dashboard``: the small HTML page at ``/``
- ``app``: :func:`~fieldgate.cloud.api.app.create_api` wires them into one FastAPI application

The gRPC servicers live in ``fieldgate.cloud.grpc_api`` and use ``management`` too. Importing
this package imports nothing heavy; import the submodule you need.
"""
