"""`key-auth` config, as Kong 3.x's schema.lua: key_names ([apikey]), hide_credentials (false),
anonymous (null; not supported), key_in_header (true), key_in_query (true), key_in_body
(false; not supported: bodies are streamed, never parsed), run_on_preflight (true), realm."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..base import PluginConfig, kong_default_only

NAME = "key-auth"


class Config(PluginConfig):
    key_names: list[str] = Field(default_factory=lambda: ["apikey"], min_length=1)
    hide_credentials: bool = False
    anonymous: Annotated[str | None, kong_default_only(None, "anonymous consumers are not supported")] = None
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: Annotated[bool, kong_default_only(False, "keys in the body are not supported (bodies are "
                                                          "streamed, never parsed)")] = False
    run_on_preflight: bool = True
    realm: str | None = None


KeyAuthConfig = Config
