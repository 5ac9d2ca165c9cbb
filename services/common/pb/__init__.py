"""gRPC stubs generated from protos/ by `make protos` (not committed)."""
