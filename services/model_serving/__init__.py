"""model-serving: the Korean document tagging model (training, inference, gRPC + HTTP service)."""
