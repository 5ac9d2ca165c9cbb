"""Kong's `correlation-id` plugin."""
