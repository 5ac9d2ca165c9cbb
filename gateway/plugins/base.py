"""Base class of every plugin's `config:` block."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PluginConfig(BaseModel):
    """Unknown keys are errors: a typo in kong.yml must not silently disable a check."""

    model_config = ConfigDict(extra="forbid", frozen=True)
