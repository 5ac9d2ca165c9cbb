"""`make bench-model`: how fast model-serving tags Korean text, next to a naive server and the bare model.

In one run on this machine, with one model (settings.model_dir by default, `--model-dir` to change):

* model-serving itself, started here as a subprocess (`python -m services.model_serving`) on free
  loopback ports with DOCTAG_ settings, measured directly over gRPC (Predict, mutual TLS with a
  tagging-worker certificate of a throwaway platform CA, as the worker calls it) and over HTTP
  (POST /api/v1/predict with a JWT signed by a throwaway RSA key pair made in a temporary
  directory). The gateway is deliberately not in the path: this measures model-serving alone.
  Then model-serving once more with DOCTAG_GRPC_TLS=false, gRPC measured again without TLS:
  the two gRPC rows give the cost of mutual TLS (one long-lived channel, as in the worker).
* the naive baseline (tests/bench/naive_server.py): a plain FastAPI endpoint, one uvicorn worker,
  the same model (as trained, not quantised) called once per request without batching, with
  model-serving's torch thread count (`--naive-threads`, `--naive-quantized` to change that).
* the floor: the model's own unbatched inference path in this process (tokenisation, windows and
  forward pass, no server), with the thread count model-serving is configured with.

Workloads: latency p50/p95 at concurrency 1 for a headline (~27 characters) and for a
2,000-character document; throughput (texts/s) for headlines at concurrency 1, 8 and 32. The
floor's "concurrency" 8 and 32 are one in-process batch of 8 or 32 texts. Clients are grpc.aio
and httpx.AsyncClient with N concurrent tasks for a fixed duration, after a warm-up, in this
process, so they share the CPU with the server exactly like a co-located caller would.

Texts are generated here (hard-coded headline and news sentences, shuffled with a seeded RNG),
so nothing outside the repository is read. Results go to a table on stdout and to JSON
(`--json`, default var/bench/model.json). Targets (issue 3): headline throughput at
concurrency 32 >= 3x the naive baseline; headline p50 at concurrency 1 <= 1.2x the floor;
2,000-character document p95 at concurrency 1 < 500 ms.

Run: .venv/bin/python -m tests.bench.bench_model [--quick] [--model-dir DIR] [--json PATH]
A benchmark, not a test: `make test` never runs it.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import pki
from services.common.auth import ensure_keypair, sign_token
from services.common.pb import model_serving_pb2 as pb
from services.common.pb import model_serving_pb2_grpc as pb_grpc
from services.common.pki import role_dns_name
from services.common.tls import TlsFiles, channel_credentials
from tests.bench.stats import (
    Check,
    Summary,
    fmt,
    format_checks,
    format_table,
    ratio,
    summarize,
)

REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = (1, 8, 32)
CALL_TIMEOUT_S = 60.0
DOC_CHARS = 2000

HEADLINES = [
    "한국은행 기준금리 3.5% 동결…물가 불안에 신중론",
    "손흥민 시즌 10호 골…토트넘, 맨시티에 역전승",
    "서울 아파트값 6주 연속 상승…강남 3구 오름폭 확대",
    "정부, 반도체 특화단지 세제 지원 확대안 의결",
    "삼성전자 2분기 영업이익 10조 회복…AI 메모리 호조",
    "국회 본회의서 추경 예산안 처리 불발…여야 공방",
    "기상청 \"올여름 평년보다 덥다\"…장마 다음 주 시작",
    "美 금리 인하 시사에 코스피 2% 급등…외국인 순매수",
    "수능 영어 1등급 비율 4.7%…지난해보다 어려웠다",
    "중국 정부, 부동산 부양책 발표…위안화 강세 전환",
    "현대차 전기차 신공장 착공…연 30만 대 생산 목표",
    "의대 증원 갈등 장기화…전공의 복귀율 여전히 저조",
    "카카오 AI 번역 서비스 출시…한국어 정확도 향상",
    "전국 곳곳 폭염특보…온열질환자 지난해 두 배 넘어",
    "프로야구 LG, 한국시리즈 2연승…우승까지 두 걸음",
    "북한 탄도미사일 발사…합참 \"동해상으로 비행\"",
]

SENTENCES = [
    "정부는 이날 서울 정부서울청사에서 관계부처 합동 회의를 열고 하반기 경제정책 방향을 확정했다.",
    "기획재정부 관계자는 내수 회복이 더딘 만큼 재정을 조기에 집행해 경기 하방 위험에 대응하겠다고 밝혔다.",
    "한국은행은 물가 상승률이 목표 수준으로 수렴하고 있지만 가계부채 증가세를 여전히 경계해야 한다고 진단했다.",
    "전문가들은 수출 회복세가 반도체에 집중돼 있어 업종 간 온도 차가 커지고 있다고 지적했다.",
    "국회 기획재정위원회는 다음 주 전체회의를 열어 세법 개정안을 본격적으로 심사할 예정이다.",
    "야당은 세수 결손에 대한 정부의 설명이 부족하다며 재정 운용 계획을 다시 제출하라고 요구했다.",
    "지방자치단체들은 지역 소멸 위기에 대응하기 위해 청년 주거 지원과 일자리 사업을 확대하고 있다.",
    "서울시는 노후 공공임대주택 재정비 사업을 통해 이천 가구 이상을 새로 공급하겠다고 발표했다.",
    "보건복지부는 응급의료 체계를 보완하기 위해 권역별 응급센터에 전문의 인건비를 추가로 지원한다.",
    "교육부는 내년부터 초등학교 늘봄학교를 전면 시행하고 돌봄 인력을 단계적으로 늘리기로 했다.",
    "환경부는 여름철 집중호우에 대비해 하천 제방과 배수 시설을 일제히 점검하라고 지시했다.",
    "산업통상자원부는 첨단산업 공급망 안정을 위해 핵심 광물 비축 물량을 두 배로 늘릴 계획이다.",
    "업계에서는 인공지능 반도체 수요가 당분간 견조할 것으로 보고 설비 투자를 앞당기는 분위기다.",
    "시민단체들은 개인정보 보호 대책이 미흡하다며 관련 법안의 보완을 촉구하는 성명을 냈다.",
    "경찰은 전세 사기 피해가 잇따르자 전담 수사팀을 꾸리고 조직적 범행 여부를 집중적으로 들여다보고 있다.",
    "농림축산식품부는 배추와 무 등 주요 채소 가격 안정을 위해 비축 물량을 시장에 방출하기로 했다.",
    "외교부는 주요 7개국 정상회의를 앞두고 공급망과 기후 협력 의제를 중심으로 막바지 조율에 나섰다.",
    "국방부는 북한의 잇단 도발에 대응해 한미 연합 훈련을 예정대로 진행한다고 밝혔다.",
    "문화체육관광부는 지역 축제와 연계한 관광 상품을 개발해 외국인 관광객 유치에 힘쓰겠다고 말했다.",
    "통계청에 따르면 지난달 취업자 수는 지난해 같은 달보다 이십만 명 넘게 늘어난 것으로 집계됐다.",
]


def headlines(rng: random.Random, n: int = 64) -> list[str]:
    """`n` headlines: the fixed ones in a seeded random order (repeating)."""
    return [rng.choice(HEADLINES) for _ in range(n)]


def documents(rng: random.Random, n: int = 8, chars: int = DOC_CHARS) -> list[str]:
    """`n` news-like documents of exactly `chars` characters: the fixed sentences, shuffled."""
    docs = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < chars:
            parts.extend(rng.sample(SENTENCES, len(SENTENCES)))
        docs.append(" ".join(parts)[:chars])
    return docs


# -- measuring ------------------------------------------------------------------------------

Call = Callable[[str], Awaitable[None]]


@dataclass
class Phase:
    """Measured calls of one phase."""

    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    first_errors: list[str] = dataclasses.field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.first_errors) < 3:
            self.first_errors.append(f"{exc.__class__.__name__}: {exc}"[:300])


async def run_phase(call: Call, texts: Sequence[str], concurrency: int, *, count: int | None = None,
                    seconds: float) -> tuple[Summary, Phase]:
    """`concurrency` tasks calling `call` with the next text until `count` calls were started
    or `seconds` have passed, whichever comes first."""
    phase = Phase()
    started = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal started
        while time.perf_counter() < end and (count is None or started < count):
            text = texts[started % len(texts)]
            started += 1
            t0 = time.perf_counter()
            try:
                await call(text)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                phase.failed(exc)
                continue
            phase.latencies_ms.append((time.perf_counter() - t0) * 1000)

    t_start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(phase.latencies_ms, phase.errors, time.perf_counter() - t_start), phase


@dataclass(frozen=True)
class Plan:
    head_count: int
    doc_count: int
    latency_seconds: float   # cap per latency phase
    seconds: float           # per throughput phase
    warmup_seconds: float


async def measure_server(name: str, call: Call, heads: list[str], docs: list[str], plan: Plan,
                         log: Callable[[str], None]) -> dict[str, dict]:
    """Warm-up, then the latency and throughput phases for one server target."""
    await run_phase(call, [*heads[:8], docs[0]], 8, seconds=plan.warmup_seconds)
    results: dict[str, dict] = {}
    phases: list[tuple[str, Sequence[str], int, int | None, float]] = [
        ("headline_c1", heads, 1, plan.head_count, plan.latency_seconds),
        ("document_c1", docs, 1, plan.doc_count, plan.latency_seconds),
        *[(f"throughput_c{c}", heads, c, None, plan.seconds) for c in CONCURRENCY],
    ]
    for key, texts, concurrency, count, seconds in phases:
        summary, phase = await run_phase(call, texts, concurrency, count=count, seconds=seconds)
        results[key] = {**summary.as_dict(), "first_errors": phase.first_errors}
        log(f"  {name:<22} {key:<14} n={summary.n:<5} err={summary.errors:<3} p50={fmt(summary.p50_ms)} ms "
            f"p95={fmt(summary.p95_ms)} ms {fmt(summary.texts_per_s)} texts/s")
    return results


def measure_floor(model_dir: Path, threads: int, heads: list[str], docs: list[str], plan: Plan,
                  log: Callable[[str], None]) -> tuple[dict[str, dict], str]:
    """The same workload through the model's unbatched inference path, in this process."""
    predict, path = load_reference(model_dir, threads)

    def timed(batches: Sequence[list[str]], count: int | None, seconds: float) -> Summary:
        latencies, calls, texts = [], 0, 0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds and (count is None or calls < count):
            batch = batches[calls % len(batches)]
            t0 = time.perf_counter()
            predict(batch)
            latencies.append((time.perf_counter() - t0) * 1000)
            calls += 1
            texts += len(batch)
        elapsed = time.perf_counter() - t_start
        return summarize(latencies, 0, elapsed, texts_per_call=texts // max(1, calls))

    end = time.perf_counter() + plan.warmup_seconds
    while time.perf_counter() < end:
        predict(heads[:8])
        predict(docs[:1])
    results: dict[str, dict] = {}
    phases: list[tuple[str, Sequence[list[str]], int | None, float]] = [
        ("headline_c1", [[h] for h in heads], plan.head_count, plan.latency_seconds),
        ("document_c1", [[d] for d in docs], plan.doc_count, plan.latency_seconds),
        *[(f"throughput_c{c}", [(heads * 2)[i:i + c] for i in range(0, len(heads), c)] if c > 1
           else [[h] for h in heads], None, plan.seconds) for c in CONCURRENCY],
    ]
    for key, batches, count, seconds in phases:
        summary = timed(batches, count, seconds)
        results[key] = {**summary.as_dict(), "first_errors": []}
        log(f"  {'floor':<22} {key:<14} n={summary.n:<5} p50={fmt(summary.p50_ms)} ms "
            f"p95={fmt(summary.p95_ms)} ms {fmt(summary.texts_per_s)} texts/s")
    return results, path


def load_reference(model_dir: Path, threads: int) -> tuple[Callable[[list[str]], object], str]:
    """The unbatched reference path (`load_model` + `probabilities`) with model-serving's settings."""
    import torch

    from services.model_serving.models.base import probabilities
    from services.model_serving.models.loader import load_model
    from services.model_serving.settings import ModelServingSettings

    options = ModelServingSettings(model_dir=model_dir).inference_options()  # ONNX Runtime included
    torch.set_num_threads(threads)
    model = load_model(model_dir, options)
    torch.set_num_threads(threads)
    return (lambda texts: probabilities(model, texts)), "inference.probabilities(load_model(...), texts)"


# -- processes --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    http: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(name: str, argv: list[str], env: dict[str, str], tmp: Path, http: str) -> Process:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, cwd=tmp, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                                 stdout=out, stderr=subprocess.STDOUT)
    return Process(name, popen, http, log)


async def wait_ready(process: Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}")
            try:
                if (await client.get(f"{process.http}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{process.name} was not ready within {timeout_s:.0f} s:\n{process.tail()}")


# -- the run ------------------------------------------------------------------------------------

ROWS = [("grpc", "model-serving gRPC (mTLS)"), ("grpc_plain", "model-serving gRPC, no TLS"),
        ("http", "model-serving HTTP"), ("naive", "naive FastAPI (HTTP)"), ("floor", "floor (in-process)")]


def table(results: dict[str, dict[str, dict]]) -> str:
    headers = ["target", "head p50 ms", "head p95 ms", "doc p50 ms", "doc p95 ms",
               *[f"c={c} texts/s" for c in CONCURRENCY], "errors"]
    rows = []
    for key, label in ROWS:
        r = results.get(key)
        if r is None:
            continue
        errors = sum(int(p["errors"]) for p in r.values())
        rows.append([label, fmt(r["headline_c1"]["p50_ms"]), fmt(r["headline_c1"]["p95_ms"]),
                     fmt(r["document_c1"]["p50_ms"]), fmt(r["document_c1"]["p95_ms"]),
                     *[fmt(r[f"throughput_c{c}"]["texts_per_s"]) for c in CONCURRENCY], str(errors)])
    return format_table(headers, rows)


def checks(results: dict[str, dict[str, dict]]) -> list[Check]:
    naive_c32 = results["naive"]["throughput_c32"]["texts_per_s"]
    floor_p50 = results["floor"]["headline_c1"]["p50_ms"]
    out = []
    for key in ("grpc", "http"):
        r = results[key]
        out += [
            Check(f"{key}: headline texts/s at c=32 / naive", ratio(r["throughput_c32"]["texts_per_s"], naive_c32),
                  ">=", 3.0),
            Check(f"{key}: headline p50 at c=1 / floor", ratio(r["headline_c1"]["p50_ms"], floor_p50), "<=", 1.2),
            Check(f"{key}: 2,000-char doc p95 at c=1 (ms)", r["document_c1"]["p95_ms"], "<", 500.0),
        ]
    return out


def serving_env(args: argparse.Namespace, tmp: Path, http_port: int, grpc_port: int, public_key: Path,
                tls: bool) -> dict[str, str]:
    return {
        "DOCTAG_HTTP_HOST": "127.0.0.1", "DOCTAG_GRPC_HOST": "127.0.0.1",
        "DOCTAG_HTTP_PORT": str(http_port), "DOCTAG_GRPC_PORT": str(grpc_port),
        "DOCTAG_MODEL_DIR": str(args.model_dir), "DOCTAG_JWT_PUBLIC_KEY_FILE": str(public_key),
        "DOCTAG_JWT_ISSUER": "doctag", "DOCTAG_JWT_AUDIENCE": "doctag-api",
        "DOCTAG_STATE_DIR": str(tmp / "var"), "DOCTAG_TLS_DIR": str(tmp / "pki"),
        "DOCTAG_GRPC_TLS": "true" if tls else "false",
        # No registry: serve exactly --model-dir and leave the database alone (no inference log either).
        "DOCTAG_MODEL_REGISTRY": "false"}


def grpc_channel(target: str, tmp: Path, tls: bool) -> grpc.aio.Channel:
    """As the tagging worker connects: its certificate, model-serving's role pinned (or plain)."""
    if not tls:
        return grpc.aio.insecure_channel(target)
    files = TlsFiles(tmp / "pki" / "ca.crt", tmp / "pki" / "tagging-worker.crt", tmp / "pki" / "tagging-worker.key")
    return grpc.aio.secure_channel(target, channel_credentials(files),
                                   options=[("grpc.ssl_target_name_override", role_dns_name("model-serving"))])


async def measure_transport(target: str, tmp: Path, tls: bool, plan: Plan) -> dict[str, float]:
    """The transport alone, without inference: a gRPC health check's round trip on one long-lived
    channel (p50 at concurrency 1, calls/s at 32), and a new channel's first call (connection set-up,
    with the TLS handshake when `tls`), median of 20."""
    async with grpc_channel(target, tmp, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def check(_: str) -> None:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)

        await run_phase(check, ["-"], 8, seconds=plan.warmup_seconds)
        single, _ = await run_phase(check, ["-"], 1, count=500, seconds=plan.latency_seconds)
        many, _ = await run_phase(check, ["-"], 32, seconds=plan.seconds)
    connects = []
    for _ in range(20):
        t0 = time.perf_counter()
        async with grpc_channel(target, tmp, tls) as fresh:
            await health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        connects.append((time.perf_counter() - t0) * 1000)
    return {"check_p50_ms": single.p50_ms, "check_p95_ms": single.p95_ms, "checks_per_s_c32": many.texts_per_s,
            "new_channel_first_call_ms": statistics.median(connects)}


def transport_table(transport: dict[str, dict[str, float]]) -> str:
    headers = ["gRPC transport (no inference)", "check p50 ms", "check p95 ms", "checks/s c=32",
               "new channel + first call ms"]
    rows = [[label, fmt(t["check_p50_ms"]), fmt(t["check_p95_ms"]), fmt(t["checks_per_s_c32"]),
             fmt(t["new_channel_first_call_ms"])]
            for key, label in (("tls", "mutual TLS"), ("plain", "no TLS")) if (t := transport.get(key))]
    return format_table(headers, rows)


async def bench_plain_grpc(args: argparse.Namespace, plan: Plan, heads: list[str], docs: list[str], tmp: Path,
                           public_key: Path, log: Callable[[str], None]) -> tuple[dict[str, dict], dict[str, float]]:
    """model-serving again with DOCTAG_GRPC_TLS=false: the cost of mutual TLS on the same calls."""
    http_port, grpc_port = free_port(), free_port()
    serving = start("model-serving-plain", [sys.executable, "-m", "services.model_serving"],
                    serving_env(args, tmp, http_port, grpc_port, public_key, tls=False), tmp,
                    f"http://127.0.0.1:{http_port}")
    try:
        log("model-serving again without TLS on gRPC ...")
        await wait_ready(serving, args.start_timeout)
        async with grpc_channel(f"127.0.0.1:{grpc_port}", tmp, tls=False) as channel:
            stub = pb_grpc.ModelServingStub(channel)

            async def call(text: str) -> None:
                await stub.Predict(pb.PredictRequest(text=text), timeout=CALL_TIMEOUT_S)

            results = await measure_server(dict(ROWS)["grpc_plain"], call, heads, docs, plan, log)
        return results, await measure_transport(f"127.0.0.1:{grpc_port}", tmp, False, plan)
    finally:
        serving.stop()


async def bench_servers(args: argparse.Namespace, plan: Plan, heads: list[str], docs: list[str],
                        log: Callable[[str], None]) -> tuple[dict[str, dict], dict[str, str]]:
    """Starts model-serving and the naive server, measures both, stops them; then model-serving
    without TLS on gRPC."""
    info: dict[str, str] = {}
    results: dict[str, dict] = {}
    transport: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp_name:
        tmp = Path(tmp_name)
        _, public_key = ensure_keypair(tmp / "keys")
        pki.ensure_local(tmp / "pki")
        token = sign_token(private_key_file=tmp / "keys" / "jwt_private.pem", user_id=str(uuid.uuid4()),
                           tenant_id=str(uuid.uuid4()), tenant_slug="bench", username="bench", roles=["user"],
                           issuer="doctag", audience="doctag-api", ttl_seconds=24 * 3600)
        http_port, grpc_port, naive_port = free_port(), free_port(), free_port()
        serving = start("model-serving", [sys.executable, "-m", "services.model_serving"],
                        serving_env(args, tmp, http_port, grpc_port, public_key, tls=True), tmp,
                        f"http://127.0.0.1:{http_port}")
        naive = start("naive", [sys.executable, "-m", "tests.bench.naive_server", "--model-dir", str(args.model_dir),
                                "--port", str(naive_port), "--threads", str(args.naive_threads),
                                *(["--quantize"] if args.naive_quantized else [])],
                      {}, tmp, f"http://127.0.0.1:{naive_port}")
        try:
            log("starting model-serving and the naive server, waiting for /readyz ...")
            await asyncio.gather(wait_ready(serving, args.start_timeout), wait_ready(naive, args.start_timeout))
            limits = httpx.Limits(max_connections=max(CONCURRENCY) * 2, max_keepalive_connections=max(CONCURRENCY) * 2)
            async with (grpc_channel(f"127.0.0.1:{grpc_port}", tmp, tls=True) as channel,
                        httpx.AsyncClient(timeout=CALL_TIMEOUT_S, limits=limits) as client):
                stub = pb_grpc.ModelServingStub(channel)
                first = await stub.Predict(pb.PredictRequest(text=heads[0]), timeout=CALL_TIMEOUT_S)
                info = {"model": first.model, "version": first.version}
                naive_info = (await client.get(f"{naive.http}/readyz")).json()
                info["naive_path"] = str(naive_info.get("path"))

                async def grpc_call(text: str) -> None:
                    await stub.Predict(pb.PredictRequest(text=text), timeout=CALL_TIMEOUT_S)

                headers = {"Authorization": f"Bearer {token}"}

                async def http_call(text: str) -> None:
                    response = await client.post(f"{serving.http}/api/v1/predict", json={"text": text},
                                                  headers=headers)
                    response.raise_for_status()

                async def naive_call(text: str) -> None:
                    (await client.post(f"{naive.http}/predict", json={"text": text})).raise_for_status()

                for key, call in (("grpc", grpc_call), ("http", http_call), ("naive", naive_call)):
                    results[key] = await measure_server(dict(ROWS)[key], call, heads, docs, plan, log)
            transport["tls"] = await measure_transport(f"127.0.0.1:{grpc_port}", tmp, True, plan)
        finally:
            for process in (serving, naive):
                process.stop()
        results["grpc_plain"], transport["plain"] = await bench_plain_grpc(args, plan, heads, docs, tmp, public_key,
                                                                            log)
        if args.keep_logs:
            for process in (serving, naive):
                log(f"--- {process.name} log (tail) ---\n{process.tail()}")
    results["transport"] = transport
    return results, info


def without_nan(value: object) -> object:
    """NaN (a phase without a successful call) as null, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from services.model_serving.settings import ModelServingSettings

    settings = ModelServingSettings()
    parser = argparse.ArgumentParser(description="model-serving benchmark (see the module docstring)")
    parser.add_argument("--model-dir", type=Path, default=settings.model_dir,
                        help="model artifact directory (default: DOCTAG_MODEL_DIR or the committed model)")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench" / "model.json", help="results file")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds, not minutes)")
    parser.add_argument("--seconds", type=float, help="per throughput phase (default 5, quick 1)")
    parser.add_argument("--head-count", type=int, help="headline latency samples (default 150, quick 20)")
    parser.add_argument("--doc-count", type=int, help="document latency samples (default 30, quick 5)")
    parser.add_argument("--latency-seconds", type=float, help="cap per latency phase (default 20, quick 4)")
    parser.add_argument("--warmup-seconds", type=float, help="warm-up per target (default 2, quick 0.5)")
    threads = int(getattr(settings, "torch_threads", 1))
    parser.add_argument("--floor-threads", type=int, default=threads,
                        help="torch threads of the in-process floor (default: model-serving's DOCTAG_TORCH_THREADS)")
    parser.add_argument("--naive-threads", type=int, default=threads,
                        help="torch threads of the naive server (default: model-serving's; 0: torch's default)")
    parser.add_argument("--naive-quantized", action="store_true",
                        help="give the naive baseline model-serving's int8 quantisation too "
                             "(default: model as trained)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--keep-logs", action="store_true", help="print the servers' log tails at the end")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.model_dir = args.model_dir.resolve()
    quick = args.quick
    plan = Plan(
        head_count=args.head_count or (20 if quick else 150),
        doc_count=args.doc_count or (5 if quick else 30),
        latency_seconds=args.latency_seconds or (4.0 if quick else 20.0),
        seconds=args.seconds or (1.0 if quick else 5.0),
        warmup_seconds=args.warmup_seconds if args.warmup_seconds is not None else (0.5 if quick else 2.0),
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rng = random.Random(args.seed)
    heads, docs = headlines(rng), documents(rng)
    started = time.time()
    log(f"floor: in-process, {args.floor_threads} torch thread(s) ...")
    floor, floor_path = measure_floor(args.model_dir, args.floor_threads, heads, docs, plan, log)
    results, info = asyncio.run(bench_servers(args, plan, heads, docs, log))
    results["floor"] = floor
    results_checks = checks(results)

    import torch

    meta = {
        "model_dir": str(args.model_dir), **info, "floor_path": floor_path, "floor_threads": args.floor_threads,
        "naive_threads": args.naive_threads or None,
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "quick": quick, "plan": dataclasses.asdict(plan), "seed": args.seed,
        "headline_chars_mean": sum(map(len, heads)) / len(heads), "document_chars": len(docs[0]),
        "started_at": started, "wall_seconds": time.time() - started,
        "doctag_env": {k: v for k, v in os.environ.items() if k.startswith("DOCTAG_")},
    }
    print(f"\nmodel {info.get('model')} v{info.get('version')} ({args.model_dir}); {os.cpu_count()} CPUs; "
          f"headline ~{meta['headline_chars_mean']:.0f} chars, document {meta['document_chars']} chars; "
          f"floor: {floor_path}, {args.floor_threads} thread(s); naive: {info.get('naive_path')}, "
          f"{args.naive_threads or 'default'} thread(s)"
          f"{'; QUICK run' if quick else ''}\n")
    print(table(results))
    print()
    print(transport_table(results.get("transport", {})))
    print()
    print(format_checks(results_checks))
    all_passed = all(c.passed for c in results_checks)
    print(f"\noverall: {'PASS' if all_passed else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "results": results, "checks": [c.as_dict() for c in results_checks],
              "passed": all_passed}
    args.json.write_text(json.dumps(without_nan(report), ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"results: {args.json}")
    return 1 if args.strict and not all_passed else 0


if __name__ == "__main__":
    sys.exit(main())
