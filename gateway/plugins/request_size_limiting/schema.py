"""`request-size-limiting` config, as Kong's schema.lua: allowed_payload_size (128),
size_unit (megabytes | kilobytes | bytes), require_content_length (false)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..base import PluginConfig

NAME = "request-size-limiting"
_UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}


class Config(PluginConfig):
    allowed_payload_size: int = Field(128, gt=0)
    size_unit: Literal["megabytes", "kilobytes", "bytes"] = "megabytes"
    require_content_length: bool = False

    @property
    def limit_bytes(self) -> int:
        return self.allowed_payload_size * _UNITS[self.size_unit]


RequestSizeLimitingConfig = Config
