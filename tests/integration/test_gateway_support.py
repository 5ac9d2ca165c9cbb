"""Helpers for the gateway integration tests (no tests here): real HTTP servers on
free loopback ports, each in its own thread with its own event loop, and a small
upstream app that echoes what reached it."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import GatewayApps, build_apps
from gateway.config import load_config, parse_config, write_config
from gateway.settings import GatewaySettings
from services.cli.stack import free_ports


def free_port() -> int:
    return free_ports(1)[0]


class ServerThread:
    """A uvicorn server for `app` in a background thread (signals stay with pytest)."""

    def __init__(self, app: Any, port: int, *, lifespan: str = "off") -> None:
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                                    lifespan=lifespan, proxy_headers=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def echo_app(name: str):  # type: ignore[no-untyped-def]
    """An upstream that counts the body it receives (streamed, never stored) and answers
    with what reached it. `/slow?s=N` waits N seconds first; `/download?mb=N` streams
    N MiB back."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body_bytes, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body_bytes += len(message.get("body", b""))
            more = message.get("more_body", False)
        query = scope["query_string"].decode()
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if scope["path"].endswith("/slow"):
            await asyncio.sleep(float(params.get("s", "5")))
        if scope["path"].endswith("/download"):
            chunk = b"x" * (1024 * 1024)
            total = int(params.get("mb", "1"))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream"),
                                    (b"content-length", str(total * len(chunk)).encode())]})
            for _ in range(total):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        payload = json.dumps({
            "upstream": name, "method": scope["method"], "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"), "query": query,
            "headers": {k: ", ".join(v) for k, v in headers.items()}, "body_bytes": body_bytes,
        }, ensure_ascii=False).encode()
        status = int(params.get("status", "200"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json; charset=utf-8"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"x-upstream", name.encode()),
                                (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                                (b"x-request-id", b"upstream-own-id")]})
        await send({"type": "http.response.body", "body": payload})

    return app


def gateway_config_data(targets: dict[str, list[str]], *, upload_limit_bytes: int = 60 * 1024 * 1024,
                        cooldown_hint: str = "") -> dict[str, Any]:
    """A kong.yml for tests: `upload` (POST allowed, size limited) and `search`
    (GET only, roles user/tenant_admin) services over the given targets."""
    passive = {"passive": {"healthy": {"successes": 1},
                           "unhealthy": {"tcp_failures": 1, "timeouts": 2, "http_failures": 3,
                                         "http_statuses": [503]}}}
    return {
        "_format_version": "3.0",
        "upstreams": [
            {"name": name, "targets": [{"target": t} for t in addrs], "healthchecks": passive}
            for name, addrs in targets.items()
        ],
        "services": [
            {"name": "upload", "host": "upload-upstream", "port": 80, "retries": 3,
             "connect_timeout": 2000, "read_timeout": 1500, "write_timeout": 5000,
             "routes": [{"name": "documents", "paths": ["/api/v1/documents"], "strip_path": False,
                         "methods": ["GET", "POST", "PUT", "DELETE"],
                         "plugins": [{"name": "request-size-limiting",
                                      "config": {"allowed_payload_size": upload_limit_bytes,
                                                 "size_unit": "bytes"}}]},
                        {"name": "admin", "paths": ["/api/v1/documents/admin"], "strip_path": True,
                         "plugins": [{"name": "acl", "config": {"allow": ["tenant_admin"]}}]}]},
            {"name": "search", "host": "search-upstream", "port": 80, "retries": 2,
             "connect_timeout": 2000, "read_timeout": 5000,
             "routes": [{"name": "search", "paths": ["/api/v1/search"], "methods": ["GET"],
                         "strip_path": False}]},
        ],
        "plugins": [
            {"name": "correlation-id", "config": {"header_name": "X-Request-ID", "generator": "uuid",
                                                  "echo_downstream": True}},
            {"name": "jwt", "config": {"claims_to_verify": ["exp"]}},
            {"name": "acl", "config": {"allow": ["user", "tenant_admin"]}},
            {"name": "request-size-limiting", "config": {"allowed_payload_size": 1, "size_unit": "megabytes"}},
            {"name": "prometheus", "config": {"status_code_metrics": True, "latency_metrics": True,
                                              "bandwidth_metrics": True, "upstream_health_metrics": True}},
            {"name": "response-transformer", "config": {"add": {"headers": [
                "X-Content-Type-Options:nosniff", "Cache-Control:no-store"]}}},
        ],
        "consumers": [{"username": "doctag-platform", "jwt_secrets": [
            {"key": "doctag", "algorithm": "RS256", "rsa_public_key": "{file:${DOCTAG_JWT_PUBLIC_KEY_FILE}}"}]}],
    }


class GatewayServer(ServerThread):
    """The proxy listener plus the status listener (`status`) of one in-process gateway."""

    def __init__(self, apps: GatewayApps, port: int, status_port: int) -> None:
        super().__init__(apps.proxy, port, lifespan="on")
        self.apps = apps
        self.status = ServerThread(apps.status, status_port)

    def start(self) -> GatewayServer:
        super().start()
        self.status.start()
        return self

    def stop(self) -> None:
        self.status.stop()
        super().stop()


def gateway_settings(tmp_path: Path, config_path: Path, *, db_name: str, key_dir: Path,
                     cooldown: float = 30.0, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        gateway_config=config_path, http_port=free_port(), gateway_status_port=free_port(), db_name=db_name,
        state_dir=tmp_path / "state", jwt_private_key_file=key_dir / "jwt_private.pem",
        jwt_public_key_file=key_dir / "jwt_public.pem", gateway_unhealthy_cooldown_seconds=cooldown,
        db_pool_max=4, **overrides,
    )


def start_gateway(tmp_path: Path, data: dict[str, Any], *, db_name: str, key_dir: Path,
                  cooldown: float = 30.0, **overrides: Any) -> GatewayServer:
    """Writes `data` as kong.yml under tmp_path and serves a gateway for it on free ports.

    Token revocation is off unless asked for (`gateway_token_revocation=True`): most of these
    tests sign tokens for users that exist only in the token; the revocation tests and the
    security table create real users and turn it on."""
    overrides.setdefault("gateway_token_revocation", False)
    config_path = write_config(parse_config(data, "test"), tmp_path / "kong.yml")
    settings = gateway_settings(tmp_path, config_path, db_name=db_name, key_dir=key_dir, cooldown=cooldown,
                                **overrides)
    apps = build_apps(settings, load_config(config_path))
    return GatewayServer(apps, settings.http_port, settings.gateway_status_port).start()
