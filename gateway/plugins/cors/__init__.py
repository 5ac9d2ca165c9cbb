"""Kong's `cors` plugin."""
