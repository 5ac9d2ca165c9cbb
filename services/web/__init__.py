"""The web UI: server-rendered Korean pages over the public API (reached through the gateway)."""
