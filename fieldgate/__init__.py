"""fieldgate: an edge-to-cloud device gateway suite.

Package map (each subpackage lives in the top-level folder of the same role):

- ``fieldgate.v1``    generated protobuf/gRPC code (source: ``proto/fieldgate/v1``)
- ``fieldgate.protocol`` topics, payload formats and codecs shared by edge, cloud and sims
  (folder ``fieldgate/protocol/``; no I/O)
- ``fieldgate.edge``  the edge agent (folder ``edge/``)
- ``fieldgate.cloud`` the cloud services (folder ``cloud/``)
- ``fieldgate.sims``  simulated devices (folder ``firmware-sims/``)
- ``fieldgate.config``, ``fieldgate.errors``, ``fieldgate.cli``: shared by all of them
"""

__version__ = "0.1.0"
