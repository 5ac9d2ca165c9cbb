"""The Kong plugins this gateway implements, by name.

Each plugin module has a pydantic `Config` (the plugin's `config:` block in
kong.yml, unknown keys rejected) and the logic the proxy calls.
"""
from __future__ import annotations

from pydantic import BaseModel

from .acl import AclConfig
from .correlation_id import CorrelationIdConfig
from .jwt_auth import JwtConfig
from .size_limit import RequestSizeLimitingConfig

PLUGIN_CONFIGS: dict[str, type[BaseModel]] = {
    "correlation-id": CorrelationIdConfig,
    "jwt": JwtConfig,
    "acl": AclConfig,
    "request-size-limiting": RequestSizeLimitingConfig,
}

# Plugins that only make sense once per gateway (they run before any route is matched).
GLOBAL_ONLY = frozenset({"correlation-id"})

__all__ = [
    "GLOBAL_ONLY",
    "PLUGIN_CONFIGS",
    "AclConfig",
    "CorrelationIdConfig",
    "JwtConfig",
    "RequestSizeLimitingConfig",
]
