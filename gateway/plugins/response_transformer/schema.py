"""`response-transformer` config, as Kong's schema.lua: `remove`, `rename`, `replace`, `add`,
`append`, each with `headers` (and `json`, `json_types`). Header entries are `name:value`
(`remove`: names; `rename`: `old:new`). JSON body transformations are not implemented:
their lists must stay empty (Kong's default)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from ..base import PluginConfig, kong_default_only

NAME = "response-transformer"
_NO_JSON = "JSON body transformations are not supported (only headers)"
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"


def _split(entry: str) -> tuple[str, str]:
    name, sep, value = entry.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"{entry!r} must be 'name:value'")
    return name.strip(), value.strip()


class _Section(PluginConfig):
    headers: list[str] = Field(default_factory=list)
    json_paths: Annotated[list[str], kong_default_only([], _NO_JSON)] = Field(default_factory=list, alias="json")


class _TypedSection(_Section):
    json_types: Annotated[list[str], kong_default_only([], _NO_JSON)] = Field(default_factory=list)

    @field_validator("headers")
    @classmethod
    def _pairs(cls, headers: list[str]) -> list[str]:
        for entry in headers:
            _split(entry)
        return headers


class _Remove(_Section):
    pass


class _Rename(_Section):
    @field_validator("headers")
    @classmethod
    def _pairs(cls, headers: list[str]) -> list[str]:
        for entry in headers:
            _split(entry)
        return headers


class Config(PluginConfig):
    remove: _Remove = Field(default_factory=_Remove)
    rename: _Rename = Field(default_factory=_Rename)
    replace: _TypedSection = Field(default_factory=_TypedSection)
    add: _TypedSection = Field(default_factory=_TypedSection)
    append: _TypedSection = Field(default_factory=_TypedSection)

    @staticmethod
    def pairs(entries: list[str]) -> list[tuple[str, str]]:
        return [_split(e) for e in entries]
