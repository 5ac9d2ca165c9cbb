"""Kong's `jwt` plugin."""
