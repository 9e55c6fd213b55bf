"""The ingest stage: the edge uplink gRPC service, its edge sessions and the edge tracker."""
