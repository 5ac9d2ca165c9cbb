"""The Kong-style API gateway: routing, load balancing, passive health checks,
JWT/ACL/size-limit/correlation-id plugins, and token issuance.

Configured by a declarative file in Kong's `kong.yml` format (see README.md).
"""
