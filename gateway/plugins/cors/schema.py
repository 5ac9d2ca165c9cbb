"""`cors` config, as Kong 3.x's schema.lua: origins (exact origins, `*`, or regular
expressions), methods, headers, exposed_headers, credentials (false), max_age,
preflight_continue (false), private_network (false)."""
from __future__ import annotations

import re

from pydantic import Field, field_validator

from ..base import PluginConfig

NAME = "cors"
_METHODS = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
_REGEX_CHARS = re.compile(r"[\^$*+?()\[\]{}|\\]")


class Config(PluginConfig):
    origins: list[str] | None = None
    methods: list[str] = Field(default_factory=lambda: list(_METHODS))
    headers: list[str] | None = None
    exposed_headers: list[str] | None = None
    credentials: bool = False
    max_age: int | None = Field(None, ge=0)
    preflight_continue: bool = False
    private_network: bool = False

    @field_validator("origins")
    @classmethod
    def _origins(cls, origins: list[str] | None) -> list[str] | None:
        for origin in origins or ():
            if origin != "*" and _REGEX_CHARS.search(origin):
                try:
                    re.compile(origin)
                except re.error as exc:
                    raise ValueError(f"origin {origin!r} is not a valid regular expression: {exc}") from None
        return origins

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in _METHODS]
        if unknown:
            raise ValueError(f"unknown methods: {unknown}")
        return methods

    def allows(self, origin: str) -> bool:
        """Kong: no origins configured means any; `*` any; otherwise an exact or regex match."""
        if not self.origins:
            return True
        for allowed in self.origins:
            if allowed == "*" or allowed == origin:
                return True
            if _REGEX_CHARS.search(allowed) and re.fullmatch(allowed, origin):
                return True
        return False
