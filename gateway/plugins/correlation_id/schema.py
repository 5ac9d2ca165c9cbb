"""`correlation-id` config, as Kong's schema.lua: header_name (Kong-Request-ID),
generator (uuid#counter; `tracker`, made of nginx variables, is not supported),
echo_downstream (false)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..base import PluginConfig

NAME = "correlation-id"
# The id is needed before routing (every log line and problem body carries it).
GLOBAL_ONLY = True


class Config(PluginConfig):
    header_name: str = Field("Kong-Request-ID", pattern=r"^[A-Za-z0-9-]{1,64}$")
    generator: Literal["uuid", "uuid#counter"] = "uuid#counter"
    echo_downstream: bool = False

    @field_validator("generator", mode="before")
    @classmethod
    def _no_tracker(cls, value: object) -> object:
        if value == "tracker":
            raise ValueError("generator 'tracker' (nginx variables) is not supported; use uuid or uuid#counter")
        return value


CorrelationIdConfig = Config
