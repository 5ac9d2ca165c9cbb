"""Plugin logic on its own: request-size-limiting, acl, correlation-id and jwt."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt as pyjwt
import pytest

from gateway.plugins.acl.handler import enforce, is_allowed
from gateway.plugins.acl.schema import AclConfig
from gateway.plugins.correlation_id.handler import IdGenerator, is_valid_id
from gateway.plugins.jwt.handler import JwtVerifier, RsaCredential, find_token
from gateway.plugins.jwt.schema import JwtConfig
from gateway.plugins.request_size_limiting.handler import (
    PayloadTooLarge,
    check_declared,
    limited,
    parse_content_length,
)
from gateway.plugins.request_size_limiting.schema import RequestSizeLimitingConfig
from services.common.auth import ensure_keypair, sign_token
from services.common.errors import ProblemError

# ----------------------------------------------------------------- request-size-limiting


def test_size_units() -> None:
    assert RequestSizeLimitingConfig(allowed_payload_size=100).limit_bytes == 100 * 1024 * 1024
    assert RequestSizeLimitingConfig(allowed_payload_size=3, size_unit="kilobytes").limit_bytes == 3072
    assert RequestSizeLimitingConfig(allowed_payload_size=7, size_unit="bytes").limit_bytes == 7


def test_declared_length_checked_early() -> None:
    config = RequestSizeLimitingConfig(allowed_payload_size=10, size_unit="bytes")
    check_declared(10, True, config)
    check_declared(None, True, config)  # chunked: counted while streaming
    with pytest.raises(ProblemError) as info:
        check_declared(11, True, config)
    assert info.value.status == 413 and info.value.extra == {"max_bytes": 10}
    strict = RequestSizeLimitingConfig(allowed_payload_size=10, size_unit="bytes", require_content_length=True)
    check_declared(None, False, strict)  # no body, nothing required
    with pytest.raises(ProblemError) as info:
        check_declared(None, True, strict)
    assert info.value.status == 411


def test_content_length_parsing() -> None:
    assert parse_content_length(None) is None
    assert parse_content_length(" 42 ") == 42
    for bad in ("-1", "1e3", "abc", "٣"):
        with pytest.raises(ProblemError) as info:
            parse_content_length(bad)
        assert info.value.status == 400 and info.value.field == "Content-Length"


async def _source(*chunks: bytes):  # type: ignore[no-untyped-def]
    for chunk in chunks:
        yield chunk


async def test_streamed_body_counted_and_cut_at_the_limit() -> None:
    passed = [c async for c in limited(_source(b"abc", b"", b"def"), 6)]
    assert passed == [b"abc", b"def"]
    received = []
    with pytest.raises(PayloadTooLarge):
        async for chunk in limited(_source(b"abc", b"def", b"g", b"never"), 6):
            received.append(chunk)
    assert received == [b"abc", b"def"]  # nothing past the limit is handed on
    assert [c async for c in limited(_source(b"x" * 100), None)] == [b"x" * 100]


# ----------------------------------------------------------------- acl

def test_acl_allow_and_deny() -> None:
    allow = AclConfig(allow=["user", "tenant_admin"])
    assert is_allowed(["user"], allow)
    assert is_allowed(["platform_admin", "tenant_admin"], allow)
    assert not is_allowed(["platform_admin"], allow)
    assert not is_allowed([], allow)
    deny = AclConfig(deny=["guest"])
    assert is_allowed(["user"], deny)
    assert not is_allowed(["user", "guest"], deny)


def test_acl_enforce_statuses() -> None:
    config = AclConfig(allow=["tenant_admin"])
    enforce(["tenant_admin"], config)
    with pytest.raises(ProblemError) as info:
        enforce(["user"], config)
    assert info.value.status == 403
    with pytest.raises(ProblemError) as info:
        enforce(None, config)
    assert info.value.status == 401


# ----------------------------------------------------------------- correlation-id

def test_valid_ids() -> None:
    assert is_valid_id(str(uuid.uuid4()))
    assert is_valid_id("0af7651916cd43dd8448eb211c80319c")
    assert is_valid_id("8c1d#12")
    for bad in (None, "", "has space", "quote\"", "x" * 129, "-leading-dash", "한글"):
        assert not is_valid_id(bad)


def test_generators() -> None:
    first, second = IdGenerator("uuid")(), IdGenerator("uuid")()
    assert first != second and str(uuid.UUID(first)) == first
    counter = IdGenerator("uuid#counter")
    a, b = counter(), counter()
    assert a.split("#")[0] == b.split("#")[0] and (a.split("#")[1], b.split("#")[1]) == ("1", "2")


# ----------------------------------------------------------------- jwt

@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    private, public = ensure_keypair(tmp_path_factory.mktemp("k1"))
    other_private, _ = ensure_keypair(tmp_path_factory.mktemp("k2"))
    return private, public, other_private


def _token(private: Path, **overrides) -> str:  # type: ignore[no-untyped-def]
    args = dict(private_key_file=private, user_id="u1", tenant_id=str(uuid.uuid4()), tenant_slug="hr",
                username="kim", roles=["user"], issuer="doctag", audience="doctag-api", ttl_seconds=600)
    args.update(overrides)
    return sign_token(**args)


def _verifier(public: Path) -> JwtVerifier:
    return JwtVerifier([RsaCredential(consumer="c", key="doctag", public_key_pem=public.read_text())],
                       audience="doctag-api")


def _status(verifier: JwtVerifier, headers: dict, config: JwtConfig | None = None) -> tuple[int, str]:
    with pytest.raises(ProblemError) as info:
        verifier.authenticate(headers, config or JwtConfig(claims_to_verify=["exp"]))
    return info.value.status, info.value.slug


def test_jwt_valid_token(keys: tuple[Path, Path, Path]) -> None:
    private, public, _ = keys
    auth = _verifier(public).authenticate({"authorization": f"Bearer {_token(private)}"},
                                          JwtConfig(claims_to_verify=["exp"]))
    assert auth.principal.username == "kim" and auth.principal.roles == ("user",)
    assert auth.credential.key == "doctag"


def test_jwt_rejections(keys: tuple[Path, Path, Path]) -> None:
    private, public, other = keys
    verifier = _verifier(public)
    assert _status(verifier, {}) == (401, "unauthorized")
    assert _status(verifier, {"authorization": "Basic abc"}) == (401, "unauthorized")
    assert _status(verifier, {"authorization": "Bearer garbage"})[0] == 401
    assert _status(verifier, {"authorization": f"Bearer {_token(other)}"})[0] == 401  # forged
    assert _status(verifier, {"authorization": f"Bearer {_token(private, ttl_seconds=-60)}"}) == (401, "token-expired")
    assert _status(verifier, {"authorization": f"Bearer {_token(private, audience='x')}"})[0] == 401
    assert _status(verifier, {"authorization": f"Bearer {_token(private, issuer='nobody')}"})[0] == 401
    no_roles = pyjwt.encode({"iss": "doctag", "aud": "doctag-api", "sub": "u", "exp": int(time.time()) + 60,
                             "tenant": "t", "roles": "user"}, private.read_text(), algorithm="RS256")
    assert _status(verifier, {"authorization": f"Bearer {no_roles}"})[0] == 401
    hs = pyjwt.encode({"iss": "doctag", "aud": "doctag-api", "sub": "u", "exp": int(time.time()) + 60},
                      "secret-secret-secret-secret-secret", algorithm="HS256")
    assert _status(verifier, {"authorization": f"Bearer {hs}"})[0] == 401
    unsigned = pyjwt.encode({"iss": "doctag", "sub": "u"}, None, algorithm="none")
    assert _status(verifier, {"authorization": f"Bearer {unsigned}"})[0] == 401


def test_jwt_claims_to_verify_and_maximum_expiration(keys: tuple[Path, Path, Path]) -> None:
    private, public, _ = keys
    verifier = _verifier(public)
    expired = {"authorization": f"Bearer {_token(private, ttl_seconds=-60)}"}
    # Kong checks exp only when listed in claims_to_verify.
    assert verifier.authenticate(expired, JwtConfig(claims_to_verify=[])).principal.username == "kim"
    long_lived = {"authorization": f"Bearer {_token(private, ttl_seconds=7200)}"}
    assert _status(verifier, long_lived, JwtConfig(claims_to_verify=["exp"], maximum_expiration=3600))[0] == 401


def test_find_token_in_custom_header() -> None:
    config = JwtConfig(header_names=["x-token", "authorization"])
    assert find_token({"x-token": "abc.def.ghi"}, config) == "abc.def.ghi"
    assert find_token({"authorization": "Bearer t.t.t"}, config) == "t.t.t"
    assert find_token({"authorization": "Bearer "}, config) is None


# ----------------------------------------------------------------- response-transformer

def test_response_transformer_header_operations_in_kong_order() -> None:
    from gateway.plugins.response_transformer.handler import Handler
    from gateway.plugins.response_transformer.schema import Config

    conf = Config.model_validate({
        "remove": {"headers": ["X-Powered-By"]},
        "rename": {"headers": ["X-Old:X-New"]},
        "replace": {"headers": ["Cache-Control:private", "X-Absent:never"]},
        "add": {"headers": ["X-Content-Type-Options:nosniff", "X-New:not-added"]},
        "append": {"headers": ["Vary:Origin"]},
    })
    headers = [(b"x-powered-by", b"php"), (b"x-old", b"1"), (b"cache-control", b"max-age=60"), (b"vary", b"Accept")]
    Handler.header_filter(Handler.__new__(Handler), conf, None, headers)  # type: ignore[arg-type]
    assert headers == [(b"X-New", b"1"), (b"vary", b"Accept"), (b"Cache-Control", b"private"),
                       (b"X-Content-Type-Options", b"nosniff"), (b"Vary", b"Origin")]
    with pytest.raises(ValueError, match="name:value"):
        Config.model_validate({"add": {"headers": ["no-colon"]}})


def test_jwt_verified_tokens_are_cached_but_still_expire(keys: tuple[Path, Path, Path]) -> None:
    private, public, other = keys
    verifier = _verifier(public)
    config = JwtConfig(claims_to_verify=["exp"])
    headers = {"authorization": f"Bearer {_token(private, ttl_seconds=60)}"}
    first = verifier.authenticate(headers, config)
    assert verifier.authenticate(headers, config) == first and len(verifier._verified) == 1
    with pytest.raises(ProblemError) as info:
        verifier.authenticate(headers, config, now=time.time() + 120)
    assert info.value.slug == "token-expired"
    # A forged token is never cached.
    with pytest.raises(ProblemError):
        verifier.authenticate({"authorization": f"Bearer {_token(other)}"}, config)
    assert len(verifier._verified) == 1
