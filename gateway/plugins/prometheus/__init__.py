"""Kong's `prometheus` plugin."""
