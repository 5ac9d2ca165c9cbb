"""Kong's `acl` plugin: allow or deny by group.

Deviation from Kong: a caller's groups are the `roles` claim of the verified JWT
(the platform's users are not Kong consumers), so `acl` needs `jwt` on the same
route; without an authenticated caller it answers 401.
"""
from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field, model_validator

from services.common.errors import ProblemError

from .base import PluginConfig


class AclConfig(PluginConfig):
    allow: list[str] | None = Field(None, min_length=1)
    deny: list[str] | None = Field(None, min_length=1)
    # Kong passes the groups upstream in X-Consumer-Groups unless this is set.
    hide_groups_header: bool = False

    @model_validator(mode="after")
    def _one_of_allow_deny(self) -> AclConfig:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("exactly one of 'allow' and 'deny' must be given")
        return self


def is_allowed(groups: Iterable[str], config: AclConfig) -> bool:
    """Allow list: at least one group in it. Deny list: no group in it."""
    have = set(groups)
    if config.allow is not None:
        return bool(have & set(config.allow))
    return not (have & set(config.deny or ()))


def enforce(groups: Iterable[str] | None, config: AclConfig) -> None:
    """Raises 401 when nobody is authenticated, 403 when the groups are not allowed."""
    if groups is None:
        raise ProblemError(401, "this route needs an authenticated caller", field="Authorization",
                           headers={"WWW-Authenticate": 'Bearer realm="doctag"'})
    if not is_allowed(groups, config):
        raise ProblemError(403, "your roles do not allow this request")
