"""Generated protobuf code; regenerate with `python scripts/gen_proto.py`."""
