"""Generated protobuf and gRPC code; regenerate with `python scripts/gen_proto.py`."""
