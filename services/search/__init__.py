"""Search service: Korean full-text and tag search inside one tenant (HTTP + gRPC)."""
