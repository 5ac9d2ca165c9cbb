"""Kong's `response-transformer` plugin (headers)."""
