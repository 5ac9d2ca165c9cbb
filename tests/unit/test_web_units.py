"""The web UI's own rules: snippets rebuilt from text, the session cookie, CSRF and redirects,
Korean messages for API refusals."""
from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from services.common.auth import ensure_keypair, sign_token
from services.web import messages
from services.web.api import ApiError
from services.web.session import SessionStore, csrf_ok, csrf_token, safe_next, same_origin
from services.web.snippets import safe_snippet


def test_snippet_keeps_only_mark_and_escapes_everything_else() -> None:
    escaped = "&lt;b&gt;예산&lt;/b&gt; <mark>편성</mark> 안"
    assert str(safe_snippet(escaped)) == escaped
    # Markup that reached the snippet unescaped (a fault upstream) still ends up as text.
    assert str(safe_snippet('<img src=x onerror=alert(1)><mark>예산')) == (
        "&lt;img src=x onerror=alert(1)&gt;<mark>예산</mark>")
    assert str(safe_snippet("</mark>a<mark><mark>b")) == "a<mark>b</mark>"
    assert str(safe_snippet("")) == ""


def request(headers: dict[str, str], method: str = "POST") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": method, "path": "/x", "headers": raw, "query_string": b""})


def test_same_origin_refuses_other_sites() -> None:
    gateway = {"host": "127.0.0.1:8141", "x-forwarded-host": "127.0.0.1", "x-forwarded-port": "8080"}
    assert same_origin(request({**gateway, "origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"}))
    assert same_origin(request(gateway))  # a client that sends neither header (curl)
    assert not same_origin(request({**gateway, "origin": "http://evil.example"}))
    assert not same_origin(request({**gateway, "sec-fetch-site": "cross-site"}))
    assert not same_origin(request({**gateway, "origin": "null"}))


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    ensure_keypair(tmp_path)
    return SessionStore(public_key_file=tmp_path / "jwt_public.pem", issuer="doctag", audience="doctag-api",
                        secure=False)


def token(key_dir: Path, ttl: int = 600, audience: str = "doctag-api") -> str:
    return sign_token(private_key_file=key_dir / "jwt_private.pem", user_id="u1", tenant_id="t1",
                      tenant_slug="finance", username="kim", roles=["tenant_admin"], issuer="doctag",
                      audience=audience, ttl_seconds=ttl)


def test_session_only_from_a_token_the_platform_signed(store: SessionStore, tmp_path: Path) -> None:
    session = store.session_from_token(token(tmp_path))
    assert session is not None and session.username == "kim" and session.is_tenant_admin
    assert not session.is_platform_admin and 590 <= session.seconds_left <= 600
    assert store.session_from_token(token(tmp_path, audience="other")) is None
    assert store.session_from_token("not-a-jwt") is None
    other = tmp_path / "other"
    ensure_keypair(other)
    assert store.session_from_token(token(other)) is None  # signed by another key


def test_cookie_is_httponly_strict_and_secure_behind_tls(store: SessionStore, tmp_path: Path) -> None:
    header = store.cookie_header("abc", 3600)
    assert header.startswith("doctag_session=abc;") and "HttpOnly" in header and "SameSite=Strict" in header
    assert "Secure" not in header
    secure = SessionStore(public_key_file=tmp_path / "jwt_public.pem", issuer="doctag", audience="doctag-api",
                          secure=True)
    assert secure.cookie_header("abc", 60).startswith("__Host-doctag_session=abc;")
    assert "Secure" in secure.cookie_header("abc", 60) and "Max-Age=0" in secure.clear_header()


def test_csrf_token_is_bound_to_the_session(store: SessionStore, tmp_path: Path) -> None:
    session = store.session_from_token(token(tmp_path))
    assert session is not None
    other = store.session_from_token(token(tmp_path, ttl=900))
    assert other is not None and other.csrf != session.csrf
    assert session.csrf == csrf_token(session.token)
    same = {"host": "127.0.0.1:8141", "origin": "http://127.0.0.1:8141"}
    assert csrf_ok(request(same), session, session.csrf)
    assert csrf_ok(request({**same, "x-csrf-token": session.csrf}), session, None)
    assert not csrf_ok(request(same), session, other.csrf)
    assert not csrf_ok(request(same), session, None)
    assert not csrf_ok(request({**same, "origin": "http://evil.example"}), session, session.csrf)


def test_redirect_after_login_stays_on_this_site() -> None:
    assert safe_next("/search?q=예산") == "/search?q=예산"
    for bad in (None, "", "https://evil.example/", "//evil.example/x", "/\\evil", "javascript:alert(1)", "/a\r\nb"):
        assert safe_next(bad) == "/documents"


def test_korean_messages_for_api_refusals() -> None:
    assert "용량" in messages.problem_message(ApiError(507, {"type": "urn:doctag:problem:quota-exceeded"}))
    assert messages.problem_message(ApiError(401, {"type": "urn:doctag:problem:invalid-credentials"})) == (
        "부서 코드, 사용자 이름 또는 비밀번호가 올바르지 않습니다.")
    assert messages.problem_message(ApiError(429, {}, {"retry-after": "30"})) == (
        "요청이 너무 많습니다. 30초 후 다시 시도하세요.")
    wrong_tenant = ApiError(422, {"errors": [{"field": "body.tenant"}]})
    assert messages.problem_message(wrong_tenant) == "부서 코드 값이 올바르지 않습니다."
    assert "연결" in messages.problem_message(502)
    assert messages.failure_reason("the HWP file is encrypted (password-protected)").startswith("암호가")
    assert messages.failure_reason(None) is None


def test_sizes_and_times_for_people() -> None:
    assert messages.file_size(512) == "512 B" and messages.file_size(1536) == "1.5 KB"
    assert messages.local_time("2026-11-30T00:30:00+00:00") == "2026-11-30 09:30"  # KST
    assert messages.local_time(None) == "-"
    assert messages.details({"tags": ["경제"], "n": 1, "score": None}) == 'tags: ["경제"] · n: 1 · score: -'


def test_model_metrics_shown_as_headlines() -> None:
    metrics = {"validation": {"headlines": {"n": 3653, "accuracy": 0.873, "macro_f1": 0.8708,
                                            "per_label": {"경제": {"f1": 0.81, "accuracy": 0.9}}},
                              "petitions": {"macro_f1": 0.5}}}
    assert messages.metric_lines(metrics) == ["validation/headlines · macro_f1 0.871 · accuracy 0.873",
                                              "validation/petitions · macro_f1 0.500"]
    assert messages.metric_lines(None) == [] and messages.metric_lines({"macro_f1": 1}) == ["macro_f1 1.000"]


def test_health_and_metrics_only_for_the_platforms_own_probes(tmp_path: Path) -> None:
    """Through the gateway (X-Forwarded-Path set) /healthz, /readyz and /metrics are not there;
    the replica's own probes (the stack, the gateway's active checks) still get them."""
    import asyncio

    import httpx

    from services.web.app import build_app
    from services.web.settings import WebSettings

    app = build_app(WebSettings(state_dir=tmp_path, web_api_url="http://127.0.0.1:9"))

    async def check() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200
            for path in ("/healthz", "/readyz", "/metrics"):
                r = await client.get(path, headers={"X-Forwarded-Path": path})
                assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", path
            for path in ("/openapi.json", "/docs"):
                assert (await client.get(path)).status_code == 404, path

    asyncio.run(check())
