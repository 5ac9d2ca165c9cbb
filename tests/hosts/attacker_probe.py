"""Run inside the attacker's namespace (`python -m tests.hosts.attacker_probe CA_FILE`): tries every
platform port of the seven hosts without a platform certificate and prints one JSON object,
target -> "refused: <why>" or "OPEN: <what answered>".

The attacker knows the CA's public certificate (it is no secret) but holds no certificate of it.
The gateway's proxy port is probed as the control: it must answer (with 401), which shows the
refusals come from the services, not from a broken network.
"""
from __future__ import annotations

import asyncio
import json
import sys

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import vm_layout
from tests.hosts.netns import HOSTS

TIMEOUT = 5.0


def _grpc(target: str, ca: bytes) -> str:
    outcomes = []
    for how, channel in (("plaintext", grpc.insecure_channel(target)),
                         ("tls-without-client-cert", grpc.secure_channel(
                             target, grpc.ssl_channel_credentials(root_certificates=ca),
                             options=[("grpc.ssl_target_name_override", "upload.role.doctag")]))):
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            return f"OPEN: {how} health check answered {reply.status}"
        except grpc.RpcError as exc:
            outcomes.append(f"{how} {exc.code().name}")
        finally:
            channel.close()
    return "refused: " + "; ".join(outcomes)


def _http(url_host: str, port: int, ca_file: str) -> str:
    outcomes = []
    for scheme, verify in (("https", ca_file), ("http", False)):
        try:
            with httpx.Client(verify=verify, timeout=TIMEOUT) as client:
                resp = client.get(f"{scheme}://{url_host}:{port}/metrics")
            return f"OPEN: {scheme} answered {resp.status_code}"
        except httpx.HTTPError as exc:
            outcomes.append(f"{scheme} {type(exc).__name__}")
    return "refused: " + "; ".join(outcomes)


def _postgres(host: str) -> str:
    import psycopg

    outcomes = []
    for user in ("postgres", "doctag_upload"):
        try:
            psycopg.connect(host=host, port=vm_layout.POSTGRES_PORT, user=user, password="guessed", dbname="doctag",
                            connect_timeout=int(TIMEOUT)).close()
            return f"OPEN: logged in as {user}"
        except psycopg.OperationalError as exc:
            outcomes.append(f"{user}: {str(exc).strip().splitlines()[-1][:160]}")
    return "refused: " + "; ".join(outcomes)


def _rabbitmq(host: str) -> str:
    import aio_pika

    async def attempt(user: str, password: str) -> str:
        try:
            conn = await aio_pika.connect(f"amqp://{user}:{password}@{host}:{vm_layout.RABBITMQ_PORT}/doctag",
                                          timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is what we record
            return f"{user}: {type(exc).__name__}"
        await conn.close()
        return "OPEN"

    outcomes = [asyncio.run(attempt(u, p)) for u, p in (("guest", "guest"), ("doctag-upload", "guessed"))]
    return "OPEN: " + str(outcomes) if "OPEN" in outcomes else "refused: " + "; ".join(outcomes)


def _redis(host: str) -> str:
    import redis

    try:
        redis.Redis(host=host, port=vm_layout.REDIS_PORT, socket_timeout=TIMEOUT).get("doctag")
        return "OPEN: GET answered"
    except redis.RedisError as exc:
        return f"refused: {type(exc).__name__}: {str(exc)[:120]}"


def probe(ca_file: str) -> dict[str, str]:
    ca = open(ca_file, "rb").read()  # noqa: SIM115 - a few bytes
    results: dict[str, str] = {}
    for host in HOSTS:
        if host.role == "db":
            results[f"postgres@{host.name}"] = _postgres(host.address)
            results[f"rabbitmq@{host.name}"] = _rabbitmq(host.address)
            results[f"redis@{host.name}"] = _redis(host.address)
            continue
        for service in vm_layout.role(host.role).services:
            if service.grpc_port is not None:
                results[f"{service.name}-grpc@{host.name}"] = _grpc(f"{host.address}:{service.grpc_port}", ca)
            if service.name == "gateway":
                assert service.status_port is not None
                results[f"gateway-status@{host.name}"] = _http(host.address, service.status_port, ca_file)
            else:
                results[f"{service.name}-http@{host.name}"] = _http(host.address, service.http_port, ca_file)
    gateway = next(h for h in HOSTS if h.role == "gateway")
    try:
        resp = httpx.get(f"http://{gateway.address}:{vm_layout.GATEWAY.http_port}/api/v1/documents", timeout=TIMEOUT)
        results["control: gateway proxy"] = f"answered {resp.status_code}"
    except httpx.HTTPError as exc:
        results["control: gateway proxy"] = f"unreachable: {type(exc).__name__}"
    return results


if __name__ == "__main__":
    json.dump(probe(sys.argv[1]), sys.stdout, ensure_ascii=False)
