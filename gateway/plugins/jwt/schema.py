"""`jwt` config, as Kong's schema.lua: uri_param_names ([jwt]), cookie_names ([]),
header_names ([authorization]), key_claim_name (iss), secret_is_base64 (false),
claims_to_verify (exp and/or nbf), anonymous (null), run_on_preflight (true),
maximum_expiration (0..31536000, 0 = no limit), realm (null)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..base import PluginConfig

NAME = "jwt"


class Config(PluginConfig):
    uri_param_names: list[str] = Field(default_factory=lambda: ["jwt"])
    cookie_names: list[str] = Field(default_factory=list)
    header_names: list[str] = Field(default_factory=lambda: ["authorization"], min_length=1)
    key_claim_name: str = Field("iss", min_length=1)
    # Only meaningful for HMAC secrets, which this gateway does not accept (RS256 only).
    secret_is_base64: Literal[False] = False
    claims_to_verify: list[Literal["exp", "nbf"]] | None = None
    # An anonymous consumer would let unauthenticated callers through; not supported.
    anonymous: None = None
    run_on_preflight: bool = True
    maximum_expiration: int = Field(0, ge=0, le=31_536_000)
    realm: str | None = None

    @field_validator("secret_is_base64", mode="before")
    @classmethod
    def _no_base64(cls, value: object) -> object:
        if value is True:
            raise ValueError("secret_is_base64: true is not supported (only RS256 keys, no HMAC secrets)")
        return value

    @field_validator("anonymous", mode="before")
    @classmethod
    def _no_anonymous(cls, value: object) -> object:
        if value not in (None, ""):
            raise ValueError("anonymous consumers are not supported: every request must authenticate")
        return None


JwtConfig = Config
