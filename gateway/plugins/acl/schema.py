"""`acl` config, as Kong's schema.lua: `allow` or `deny` (exactly one), hide_groups_header,
include_consumer_groups and always_use_authenticated_groups (false)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from ..base import PluginConfig, kong_default_only

NAME = "acl"


class Config(PluginConfig):
    allow: list[str] | None = Field(None, min_length=1)
    deny: list[str] | None = Field(None, min_length=1)
    # Kong passes the groups upstream in X-Consumer-Groups unless this is set.
    hide_groups_header: bool = False
    # The groups are always the authenticated caller's roles; consumer groups do not exist here.
    include_consumer_groups: Annotated[bool, kong_default_only(False, "consumer groups are not supported")] = False
    always_use_authenticated_groups: bool = False

    @model_validator(mode="after")
    def _one_of_allow_deny(self) -> Config:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("exactly one of 'allow' and 'deny' must be given")
        return self


AclConfig = Config
