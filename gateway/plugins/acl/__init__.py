"""Kong's `acl` plugin."""
