"""`make bench-gateway`: what the gateway costs, and whether it keeps tenants apart under a flood.

1. Overhead: a small-JSON endpoint called directly and through the gateway with `jwt` +
   `acl` + `rate-limiting` (policy redis) + `correlation-id` + `prometheus`: p50/p99 at
   concurrency 1 and 32, requests/s. Targets: added p50 <= 1 ms at concurrency 1;
   throughput through the gateway >= 50% of direct at concurrency 32. The endpoint has the
   platform's shape (`create_app`, the token verified again, as upload's GET /api/v1/quota
   without its database query); a bare ASGI echo is measured too, as the gateway's cost
   against next to nothing.
2. Fairness: an upstream of two targets with two workers each (20 ms per request, like
   two 2-core replicas); tenant B calls it one request at a time while tenant A sends 500
   requests at once. B's p95 during the flood against its quiet p95, with the per-tenant
   in-flight cap on (the default) and off. Target: within 2x with the cap on.

Everything runs on loopback in separate processes (upstreams, gateway); the load comes from
this process over raw keep-alive HTTP/1.1 connections (cheaper than an HTTP library, so the
client takes less of the machine from what it measures). Redis must be running at
127.0.0.1:6379 and PostgreSQL at the usual place (the gateway pings it for readiness).
JSON goes to var/bench/gateway.json.

Run: python -m tests.bench.bench_gateway [--quick] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.cli.stack import free_ports
from services.common.auth import ensure_keypair, sign_token

from .stats import Check, format_checks, format_table, percentile

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "bench" / "gateway.json"
WORK_MS = 20
WORKERS_PER_TARGET = 2


# ------------------------------------------------------------------ the upstream (its own process)

def upstream_app() -> Any:
    """GET /api/v1/echo: a small JSON answer at once; GET /api/v1/work: 20 ms on one of two workers."""
    body = json.dumps({"ok": True, "service": "bench"}).encode()
    workers = asyncio.Semaphore(WORKERS_PER_TARGET)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"].endswith("/work"):
            async with workers:
                await asyncio.sleep(WORK_MS / 1000)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def service_app(public_key: Path) -> Any:
    """The platform's own shape of a small-JSON endpoint: `create_app` (request ids, access log,
    metrics, problem+json) and the bearer token verified again, as upload's GET /api/v1/quota
    does (without its database query)."""
    from fastapi import Depends

    from services.common.auth import Principal, TokenVerifier
    from services.common.http import create_app

    app = create_app("bench-service", title="bench")
    verifier = TokenVerifier(public_key, "doctag", "doctag-api")

    @app.get("/api/v1/quota")
    async def quota(principal: Principal = Depends(verifier)) -> dict[str, Any]:
        return {"tenant_id": principal.tenant_id, "used_bytes": 0, "quota_bytes": 104857600}

    return app


def serve_upstream(port: int, public_key: str | None) -> None:
    import uvicorn

    app = service_app(Path(public_key)) if public_key else upstream_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------ load over raw keep-alive connections

async def _connection(port: int, request: bytes, count: int, latencies: list[float], errors: list[int],
                      statuses: dict[int, int], deadline: float | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        done = 0
        while done < count and (deadline is None or time.perf_counter() < deadline):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                errors.append(status)
            done += 1
    finally:
        writer.close()


def _request(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


async def load(port: int, path: str, headers: dict[str, str], *, concurrency: int, requests: int | None = None,
               seconds: float | None = None) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []
    statuses: dict[int, int] = {}
    per = (requests // concurrency) if requests else 10**9
    deadline = time.perf_counter() + seconds if seconds else None
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, _request(path, headers), per, latencies, errors, statuses, deadline)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"n": len(latencies), "errors": len(errors), "statuses": statuses,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99), "rps": len(latencies) / elapsed}


# ------------------------------------------------------------------ processes

def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


def start_upstream(port: int, public_key: Path | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.bench.bench_gateway", "--serve-upstream", str(port)]
    if public_key is not None:
        command += ["--public-key", str(public_key)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _wait(f"http://127.0.0.1:{port}/{'healthz' if public_key else 'api/v1/echo'}", proc, "the upstream")
    return proc


def gateway_config(echo: int, work: Sequence[int], quota: int) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "upstreams": [{"name": "echo-upstream", "targets": [{"target": f"127.0.0.1:{echo}"}]},
                      {"name": "quota-upstream", "targets": [{"target": f"127.0.0.1:{quota}"}]},
                      {"name": "work-upstream", "targets": [{"target": f"127.0.0.1:{p}"} for p in work]}],
        "services": [
            {"name": "echo", "host": "echo-upstream", "port": 80, "routes": [
                {"name": "echo", "paths": ["/api/v1/echo"], "strip_path": False}]},
            {"name": "quota", "host": "quota-upstream", "port": 80, "routes": [
                {"name": "quota", "paths": ["/api/v1/quota"], "strip_path": False}]},
            {"name": "work", "host": "work-upstream", "port": 80, "routes": [
                {"name": "work", "paths": ["/api/v1/work"], "strip_path": False}]},
        ],
        "plugins": [
            {"name": "correlation-id", "config": {"header_name": "X-Request-ID", "generator": "uuid#counter",
                                                  "echo_downstream": True}},
            {"name": "jwt", "config": {"claims_to_verify": ["exp"]}},
            {"name": "acl", "config": {"allow": ["user"]}},
            {"name": "rate-limiting", "config": {"second": 1_000_000, "hour": 1_000_000_000, "limit_by": "consumer",
                                                 "policy": "redis", "redis": {"host": "127.0.0.1", "port": 6379}}},
            {"name": "prometheus", "config": {"status_code_metrics": True, "latency_metrics": True,
                                              "bandwidth_metrics": True, "upstream_health_metrics": True}},
        ],
        "consumers": [{"username": "doctag-platform", "jwt_secrets": [
            {"key": "doctag", "algorithm": "RS256", "rsa_public_key": "{file:${DOCTAG_JWT_PUBLIC_KEY_FILE}}"}]}],
    }


def start_gateway(state: Path, config: dict[str, Any], *, tenant_cap: int,
                  profile: Path | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
    port, status = free_ports(2)
    path = state / "kong.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTAG_")}
    env.update({"DOCTAG_GATEWAY_CONFIG": str(path), "DOCTAG_HTTP_PORT": str(port),
                "DOCTAG_GATEWAY_STATUS_PORT": str(status), "DOCTAG_STATE_DIR": str(state),
                "DOCTAG_DB_NAME": "postgres", "DOCTAG_DB_USER": "postgres", "DOCTAG_LOG_LEVEL": "WARNING",
                "DOCTAG_GATEWAY_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
                "DOCTAG_GATEWAY_TENANT_MAX_IN_FLIGHT": str(tenant_cap),
                # The plugin set; the bench's users and tenants exist only in their tokens.
                "DOCTAG_GATEWAY_TOKEN_REVOCATION": "false", "DOCTAG_GATEWAY_API_QUOTAS": "false"})
    command = [sys.executable, "-m", "gateway"]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "gateway"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _wait(f"http://127.0.0.1:{status}/healthz", proc, "the gateway")
    return proc, port, status


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def token(state: Path, tenant: str) -> dict[str, str]:
    signed = sign_token(private_key_file=state / "keys" / "jwt_private.pem", user_id=str(uuid.uuid4()),
                        tenant_id=tenant, tenant_slug="bench", username="bench", roles=["user"],
                        issuer="doctag", audience="doctag-api", ttl_seconds=3600)
    return {"Authorization": f"Bearer {signed}"}


# ------------------------------------------------------------------ phases

async def overhead(direct: int, gateway: int, path: str, auth: dict[str, str], quick: bool) -> dict[str, Any]:
    """The same endpoint directly and through the gateway (both with the token: the service checks it too)."""
    sequential = 500 if quick else 2000
    seconds = 3.0 if quick else 8.0
    await load(direct, path, auth, concurrency=4, seconds=1.0)  # warm-up
    await load(gateway, path, auth, concurrency=4, seconds=1.0)
    return {
        "direct_c1": await load(direct, path, auth, concurrency=1, requests=sequential),
        "gateway_c1": await load(gateway, path, auth, concurrency=1, requests=sequential),
        "direct_c32": await load(direct, path, auth, concurrency=32, seconds=seconds),
        "gateway_c32": await load(gateway, path, auth, concurrency=32, seconds=seconds),
    }


async def fairness(gateway: int, quiet_auth: dict[str, str], flood_auth: dict[str, str],
                   quick: bool) -> dict[str, Any]:
    path = "/api/v1/work"
    quiet = await load(gateway, path, quiet_auth, concurrency=1, requests=50 if quick else 150)
    flood_task = asyncio.create_task(load(gateway, path, flood_auth, concurrency=500, requests=500))
    await asyncio.sleep(0.2)  # the flood is queued everywhere before B starts measuring
    during: list[float] = []
    while not flood_task.done():
        one = await load(gateway, path, quiet_auth, concurrency=1, requests=1)
        if not flood_task.done():
            during.append(one["p50_ms"])
    flood = await flood_task
    return {"quiet": quiet, "flood": flood, "during_n": len(during),
            "during_p50_ms": percentile(during, 50), "during_p95_ms": percentile(during, 95),
            "p95_ratio": percentile(during, 95) / quiet["p95_ms"] if during else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--profile", action="store_true", help="run the gateway under cProfile for the overhead "
                                                               "phase and print where its time goes")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--public-key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.public_key)
        return 0

    echo, quota, work_a, work_b = free_ports(4)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
                               "work_ms": WORK_MS, "workers_per_target": WORKERS_PER_TARGET}
    upstreams: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
            state = Path(tmp)
            ensure_keypair(state / "keys")
            upstreams = [start_upstream(p) for p in (echo, work_a, work_b)]
            upstreams.append(start_upstream(quota, state / "keys" / "jwt_public.pem"))
            config = gateway_config(echo, [work_a, work_b], quota)
            profile = state / "gateway.prof" if args.profile else None
            # The plugin set, without the per-tenant in-flight cap (one tenant sends all the load).
            proc, port, _ = start_gateway(state, config, tenant_cap=0, profile=profile)
            try:
                auth = token(state, str(uuid.uuid4()))
                results["overhead"] = asyncio.run(overhead(quota, port, "/api/v1/quota", auth, args.quick))
                results["overhead_bare"] = asyncio.run(overhead(echo, port, "/api/v1/echo", auth, args.quick))
                results["fairness_cap_off"] = asyncio.run(fairness(port, token(state, str(uuid.uuid4())),
                                                                   token(state, str(uuid.uuid4())), args.quick))
            finally:
                stop(proc)
            if profile is not None and profile.exists():
                import pstats

                pstats.Stats(str(profile)).sort_stats("tottime").print_stats(30)
            # The default: each tenant at most 4 requests in flight per upstream.
            proc, port, _ = start_gateway(state, config, tenant_cap=4)
            try:
                auth = token(state, str(uuid.uuid4()))
                results["fairness_cap_4"] = asyncio.run(fairness(port, auth, token(state, str(uuid.uuid4())),
                                                                 args.quick))
                results["one_tenant_c32_cap_4"] = asyncio.run(
                    load(port, "/api/v1/quota", auth, concurrency=32, seconds=3.0 if args.quick else 8.0))
            finally:
                stop(proc)
    finally:
        for up in upstreams:
            stop(up)

    o = results["overhead"]
    rows = [[f"{label} {name}", str(r["n"]), str(r["errors"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['rps']:.0f}"]
            for label, key in (("quota", "overhead"), ("bare", "overhead_bare")) for name, r in results[key].items()]
    print(format_table(["phase", "requests", "errors", "p50 ms", "p99 ms", "req/s"], rows))
    capped = results["one_tenant_c32_cap_4"]
    print(f"one tenant at c=32 with the default cap of 4 in flight: {capped['rps']:.0f} req/s, "
          f"p50 {capped['p50_ms']:.1f} ms")
    for key in ("fairness_cap_4", "fairness_cap_off"):
        f = results[key]
        print(f"{key}: B quiet p95 {f['quiet']['p95_ms']:.1f} ms, during A's flood p95 {f['during_p95_ms']:.1f} ms "
              f"({f['p95_ratio']:.2f}x, {f['during_n']} requests); A's flood: {f['flood']['statuses']}, "
              f"p95 {f['flood']['p95_ms']:.0f} ms")
    checks = [
        Check("added p50 at c=1 (ms)", o["gateway_c1"]["p50_ms"] - o["direct_c1"]["p50_ms"], "<=", 1.0),
        Check("gateway/direct req/s at c=32", o["gateway_c32"]["rps"] / o["direct_c32"]["rps"], ">=", 0.5),
        Check("B's p95 under flood / quiet (cap on)", results["fairness_cap_4"]["p95_ratio"], "<=", 2.0),
    ]
    print(format_checks(checks))
    results["checks"] = [c.as_dict() for c in checks]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
