"""Kong's `request-size-limiting` plugin."""
