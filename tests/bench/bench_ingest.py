"""Ingest benchmark: uploads through the gateway, upload -> `tagged` end to end, extraction per
format, and the memory of upload and gateway while a large file streams through.

`make bench-ingest` (`BENCH_ARGS=--quick` for a smoke run); never part of `make test`. It starts
its own stack (StackLayout.with_free_ports, a temporary state directory, its own database and
AMQP prefix, all removed afterwards), prints a table and writes JSON to var/bench/ingest.json.

CPU placement (`--placement`): `split` (the default on two or more CPUs) gives model-serving the
upper half of the CPUs and everything else, PostgreSQL and RabbitMQ included, the lower half,
as the deployment's separate model host would (their CPU sets are restored afterwards);
model-serving alone is measured on the same CPUs, so the ratio says how well the pipeline keeps
the model busy. `shared` lets every process run anywhere: on a small machine the ratio then
also counts the CPU the pipeline takes away from the model.

Phases, in this order so they do not compete for the CPUs:
1. extraction per format on ../shared/samples, in process (the worker's `extract_text`);
2. end to end: a mixed batch of real Korean documents from ../shared/data (TXT, Markdown, HTML,
   CSV) uploaded in bulk requests; documents/s from the first upload to the last `tagged`,
   compared with model-serving's own throughput on the same documents (gRPC Predict on the
   text and Embed on the passage, as a worker calls them, at the concurrency the workers offer,
   workers x prefetch); target >= 80%; with the CPU time each
   service (and PostgreSQL, RabbitMQ) spent per document in both runs;
3. the tagging workers are stopped, then upload throughput for small documents at concurrency
   1 and 16 (single-file requests, documents/s);
4. one large generated file (never stored here) streamed through gateway and upload while the
   peak RSS of both is sampled; target: under 100 MB above idle.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from psycopg import sql

from services.cli import admin
from services.cli.stack import DEFAULT_GATEWAY_CONFIG, StackLayout
from tests.bench.stats import Check, fmt, format_checks, format_table
from tests.support import delete_topology

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DB_HOST = os.environ.get("DOCTAG_DB_HOST", "127.0.0.1")
DB_PORT = int(os.environ.get("DOCTAG_DB_PORT", "5432"))
AMQP_URL = os.environ.get("DOCTAG_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PASSWORD = "bench-password-1234"
MB = 1024 * 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------------------
def korean_records(data_dir: Path, count: int, seed: int) -> list[dict[str, str]]:
    """`count` records of ../shared/data, petitions (long) and headlines (short) mixed."""
    rng = random.Random(seed)
    pools = []
    for name in ("petitions_train.jsonl", "headlines_train.jsonl"):
        with (data_dir / name).open(encoding="utf-8") as fh:
            pools.append([json.loads(line) for _, line in zip(range(20_000), fh, strict=False)])
    records = [rng.choice(pools[i % 2]) for i in range(count)]
    rng.shuffle(records)
    return records


def as_file(index: int, record: dict[str, str]) -> tuple[str, bytes, str]:
    """A record as a document of one of four text formats: (file name, bytes, the text it holds)."""
    title, text = record.get("title") or f"문서 {index}", record["text"]
    body = f"{title}\n{text}"
    kind = index % 4
    if kind == 0:
        return f"문서-{index}.txt", body.encode("utf-8"), body
    if kind == 1:
        return f"문서-{index}.md", f"# {title}\n\n{text}\n".encode(), body
    if kind == 2:
        html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"
        return f"문서-{index}.html", html.encode("utf-8"), body
    escaped = text.replace('"', '""')
    return f"문서-{index}.csv", f'제목,내용\r\n"{title}","{escaped}"\r\n'.encode("cp949", "replace"), body


# -- phase 1: extraction ---------------------------------------------------------------------------
def bench_extraction(samples: Path, repeat: int) -> dict[str, dict[str, Any]]:
    from services.tagging_worker.extractors import extract_text

    per_format: dict[str, list[tuple[float, int, bool]]] = {}
    for path in sorted(p for p in samples.rglob("*") if p.is_file() and ".expected." not in p.name):
        fmt_name = path.suffix.lower().lstrip(".")
        if fmt_name not in ("pdf", "docx", "hwp", "hwpx", "txt"):
            continue
        data = path.read_bytes()
        best, ok = float("inf"), True
        for _ in range(repeat):
            started = time.perf_counter()
            try:
                extract_text(data, path.name)
            except Exception:  # noqa: BLE001 - encrypted/corrupt samples fail by design; timed all the same
                ok = False
            best = min(best, time.perf_counter() - started)
        per_format.setdefault(fmt_name, []).append((best * 1000, len(data), ok))
    out = {}
    for name, runs in sorted(per_format.items()):
        ms = [r[0] for r in runs]
        out[name] = {"files": len(runs), "failed_by_design": sum(1 for r in runs if not r[2]),
                     "median_ms": statistics.median(ms), "max_ms": max(ms),
                     "mb_per_s": sum(r[1] for r in runs) / MB / (sum(ms) / 1000) if sum(ms) else 0.0}
    return out


# -- the stack -----------------------------------------------------------------------------------
def gateway_template(tmp: Path, max_mb: int) -> Path:
    """kong.yml with the documents route's size limit raised for the large-file phase."""
    config = yaml.safe_load(DEFAULT_GATEWAY_CONFIG.read_text(encoding="utf-8"))
    for service in config.get("services", []):
        for route in service.get("routes", []):
            if "/api/v1/documents" in route.get("paths", []):
                for plugin in route.get("plugins", []):
                    if plugin["name"] == "request-size-limiting":
                        plugin["config"]["allowed_payload_size"] = max_mb
    path = tmp / "kong.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def create_database(name: str) -> str:
    from services.common.migrate import upgrade
    from services.common.settings import CommonSettings

    upgrade(CommonSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=name), user="postgres")
    return f"host={DB_HOST} port={DB_PORT} user=postgres dbname={name}"


def drop_database(name: str) -> None:
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def program_pid(layout: StackLayout, name: str) -> int:
    return int(layout.supervisorctl("pid", name).stdout.strip())


def _process_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds used so far, command name) for every process readable in /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        # after the command: state ppid ... utime stime cutime cstime (fields 14-17 overall); the
        # children's part holds the time of exited children (PostgreSQL backends of closed
        # connections), which would otherwise vanish from the sum between two samples.
        table[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / ticks,
                                  head.partition("(")[2])
    return table


def cpu_seconds(layout: StackLayout) -> dict[str, float]:
    """CPU seconds used so far by each program of the stack, its child processes (the worker's
    extractor) included, and by all PostgreSQL and RabbitMQ server processes on the machine."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)

    def tree(pid: int) -> float:
        return table.get(pid, (0, 0.0, ""))[1] + sum(tree(child) for child in children.get(pid, []))

    used = {program.name: tree(program_pid(layout, program.name)) for program in layout.programs()}
    for server, names in (("postgresql", ("postgres",)), ("rabbitmq", ("beam.smp", "erl_child_setup"))):
        used[server] = sum(cpu for _, cpu, comm in table.values() if comm in names)
    return used


def cpu_per_document(before: dict[str, float], after: dict[str, float], documents: int) -> dict[str, float]:
    """Milliseconds of CPU per document by service (programs of one kind summed: upload-1 + upload-2)."""
    per_kind: dict[str, float] = {}
    for name, seconds in after.items():
        kind = name.rstrip("0123456789").rstrip("-")
        per_kind[kind] = per_kind.get(kind, 0.0) + seconds - before.get(name, 0.0)
    return {kind: 1000 * seconds / max(documents, 1) for kind, seconds in sorted(per_kind.items())}


SERVER_PROCESS_NAMES = ("postgres", "beam.smp", "erl_child_setup", "epmd", "inet_gethost")


def split_cpus() -> tuple[str, str] | None:
    """(CPU list for everything else, CPU list for model-serving), or None on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))


def _set_affinity_all_threads(pid: int, cpus: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def pin_servers(cpus: set[int]) -> dict[int, set[int]]:
    """Moves the PostgreSQL and RabbitMQ server processes (every thread) onto `cpus`; returns their
    previous CPU sets for `restore_servers`. Processes it may not move (not root) are left alone."""
    previous: dict[int, set[int]] = {}
    for pid, (_, _, comm) in _process_table().items():
        if comm not in SERVER_PROCESS_NAMES:
            continue
        try:
            before = os.sched_getaffinity(pid)
            _set_affinity_all_threads(pid, cpus)
            previous[pid] = before
        except (OSError, PermissionError):
            continue
    return previous


def restore_servers(previous: dict[int, set[int]]) -> None:
    for pid, cpus in previous.items():
        try:
            _set_affinity_all_threads(pid, cpus)
        except OSError:
            continue


# -- phases 2-4 ----------------------------------------------------------------------------------
async def token_for(client: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    resp = await client.post("/api/v1/auth/token", json={"tenant": tenant, "username": "bench",
                                                          "password": PASSWORD})
    resp.raise_for_status()
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


async def bench_end_to_end(client: httpx.AsyncClient, headers: dict[str, str], admin_dsn: str, tenant_id: str,
                           files: list[tuple[str, bytes, str]], bulk_size: int, timeout_s: float) -> dict[str, Any]:
    started = time.time()
    chunks = [files[i:i + bulk_size] for i in range(0, len(files), bulk_size)]
    gate = asyncio.Semaphore(4)

    async def send(chunk: list[tuple[str, bytes, str]]) -> None:
        async with gate:
            parts = [("file", (name, data, "application/octet-stream")) for name, data, _ in chunk]
            resp = await client.post("/api/v1/documents", headers=headers, files=parts)
            assert resp.status_code in (202, 207), resp.text

    await asyncio.gather(*(send(c) for c in chunks))
    uploaded = time.time() - started
    deadline = time.monotonic() + timeout_s
    done, last = 0, None
    # Every upload has been answered, so every document exists: the batch is done when none of
    # them is still queued or processing. (Texts that repeat in the data are answered as
    # duplicates of the first copy, so the tenant holds fewer documents than files were sent.)
    documents = 0
    while time.monotonic() < deadline:
        with psycopg.connect(admin_dsn) as conn:
            row = conn.execute("SELECT count(*), count(*) FILTER (WHERE status IN ('tagged', 'failed')), "
                               "count(*) FILTER (WHERE status = 'failed'), max(processed_at) "
                               "FROM documents.documents WHERE tenant_id = %s", (tenant_id,)).fetchone()
        assert row is not None
        documents, done, failed, last = row
        if done >= documents:
            break
        await asyncio.sleep(0.5)
    seconds = (last.timestamp() - started) if last else float("nan")
    return {"files": len(files), "documents": documents, "duplicates": len(files) - documents, "finished": done,
            "failed": failed, "upload_seconds": uploaded, "seconds": seconds,
            "docs_per_s": done / seconds if seconds else 0.0}


async def bench_model_serving(target: str, files: list[tuple[str, bytes, str]], tenant_id: str,
                              concurrency: int, pki_dir: Path | None) -> dict[str, Any]:
    """What model-serving does per document when nothing else runs: Predict on the text, then Embed
    on the passage (title and text), the two calls a tagging worker makes, at the workers'
    concurrency, called as the workers call it (mutual TLS unless `pki_dir` is None, one channel)."""
    import grpc

    from services.common.pb import model_serving_pb2, model_serving_pb2_grpc
    from services.common.pki import role_dns_name
    from services.common.tls import TlsFiles, channel_credentials
    from services.tagging_worker.worker import passage_text

    if pki_dir is None:
        channel_cm = grpc.aio.insecure_channel(target)
    else:
        tls_files = TlsFiles(pki_dir / "ca.crt", pki_dir / "tagging-worker.crt", pki_dir / "tagging-worker.key")
        channel_cm = grpc.aio.secure_channel(target, channel_credentials(tls_files), options=[
            ("grpc.ssl_target_name_override", role_dns_name("model-serving"))])
    async with channel_cm as channel:
        stub = model_serving_pb2_grpc.ModelServingStub(channel)  # type: ignore[no-untyped-call]
        queue = [(Path(name).stem, text) for name, _, text in files]
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                title, text = queue.pop()
                await stub.Predict(model_serving_pb2.PredictRequest(text=text, tenant_id=tenant_id), timeout=120)
                await stub.Embed(model_serving_pb2.EmbedRequest(
                    texts=[passage_text(title, text)], mode=model_serving_pb2.EMBED_MODE_PASSAGE,
                    tenant_id=tenant_id), timeout=120)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"documents": len(files), "concurrency": concurrency, "seconds": seconds,
            "docs_per_s": len(files) / seconds}


async def bench_uploads(client: httpx.AsyncClient, headers: dict[str, str], count: int,
                        concurrency: int) -> dict[str, Any]:
    base = "정부는 내년 예산을 늘리기로 했다. 지방자치단체의 재정 부담을 덜기 위한 조치다.\n" * 20
    queue = list(range(count))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            i = queue.pop()
            data = f"{uuid.uuid4()}\n{base}".encode()
            t0 = time.perf_counter()
            resp = await client.post("/api/v1/documents", headers=headers,
                                     files={"file": (f"작은 문서 {i}.txt", data, "text/plain")})
            assert resp.status_code == 202, resp.text
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {"documents": count, "concurrency": concurrency, "docs_per_s": count / seconds,
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000}


async def bench_large_file(client: httpx.AsyncClient, headers: dict[str, str], size: int,
                           pids: dict[str, list[int]]) -> dict[str, Any]:
    """Streams a generated text file of `size` bytes; samples RSS of the watched processes."""
    boundary = uuid.uuid4().hex
    line = ("대용량 문서 스트리밍 시험: 정부는 내년 예산을 늘리기로 했다. " * 4 + "\n").encode()
    block = line * (MB // len(line))

    async def body() -> AsyncIterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"large.txt\"\r\n"
               f"Content-Type: text/plain\r\n\r\n").encode()
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            sent += len(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    idle = {name: sum(rss_bytes(p) for p in ps) for name, ps in pids.items()}
    peak = dict(idle)
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            for name, ps in pids.items():
                peak[name] = max(peak[name], sum(rss_bytes(p) for p in ps))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    resp = await client.post("/api/v1/documents", headers={**headers,
                             "Content-Type": f"multipart/form-data; boundary={boundary}"}, content=body(),
                             timeout=httpx.Timeout(600))
    seconds = time.perf_counter() - started
    stop.set()
    await sampler
    assert resp.status_code == 202, resp.text
    await client.delete(f"/api/v1/documents/{resp.json()['id']}", headers=headers)
    return {"bytes": size, "seconds": seconds, "mb_per_s": size / MB / seconds,
            **{f"{name}_idle_mb": idle[name] / MB for name in pids},
            **{f"{name}_peak_mb": peak[name] / MB for name in pids},
            **{f"{name}_growth_mb": (peak[name] - idle[name]) / MB for name in pids}}


async def bench_stack(args: argparse.Namespace, layout: StackLayout, admin_dsn: str,
                      files: list[tuple[str, bytes, str]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    slug = f"bench-{uuid.uuid4().hex[:6]}"
    admin.create_tenant(admin_dsn, slug, "벤치마크과", 8 * 1024 * MB)
    admin.create_user(admin_dsn, slug, "bench", PASSWORD, "user")
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT id FROM identity.tenants WHERE slug = %s", (slug,)).fetchone()
    assert row is not None
    tenant_id = str(row[0])
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=layout.gateway_url, timeout=120, limits=limits) as client:
        headers = await token_for(client, slug)
        log(f"end to end: {len(files)} documents in bulk requests of {args.bulk_size} ...")
        before = cpu_seconds(layout)
        results["end_to_end"] = await bench_end_to_end(client, headers, admin_dsn, tenant_id, files,
                                                       args.bulk_size, args.e2e_timeout)
        results["end_to_end"]["cpu_ms_per_document"] = cpu_per_document(
            before, cpu_seconds(layout), results["end_to_end"]["finished"])
        from services.tagging_worker.settings import WorkerSettings

        concurrency = WorkerSettings().prefetch * len(layout.worker_ports)
        log(f"model-serving alone: gRPC Predict + Embed on the same texts, concurrency {concurrency} ...")
        before = cpu_seconds(layout)
        results["model_serving"] = await bench_model_serving(
            f"{layout.host}:{layout.model_ports[1]}", files, tenant_id, concurrency,
            layout.pki_dir if layout.http_tls else None)
        results["model_serving"]["cpu_ms_per_document"] = cpu_per_document(
            before, cpu_seconds(layout), results["model_serving"]["documents"])
        for i in range(len(layout.worker_ports)):
            layout.supervisorctl("stop", f"tagging-worker-{i + 1}")
        for concurrency in (1, 16):
            log(f"uploads through the gateway, concurrency {concurrency} ...")
            results[f"upload_c{concurrency}"] = await bench_uploads(client, headers, args.upload_count, concurrency)
        pids = {"upload": [program_pid(layout, "upload-1"), program_pid(layout, "upload-2")],
                "gateway": [program_pid(layout, "gateway")]}
        log(f"large file: {args.large_mb} MB streamed through gateway and upload ...")
        results["large_file"] = await bench_large_file(client, headers, args.large_mb * MB, pids)
    return results


def report(results: dict[str, Any]) -> tuple[str, list[Check]]:
    rows = []
    for key in ("upload_c1", "upload_c16"):
        r = results[key]
        rows.append([f"upload, concurrency {r['concurrency']}", fmt(r["docs_per_s"]),
                     f"p50 {fmt(r['p50_ms'])} ms, p95 {fmt(r['p95_ms'])} ms"])
    e2e, model = results["end_to_end"], results["model_serving"]
    rows.append(["upload -> tagged (mixed batch)", fmt(e2e["docs_per_s"]),
                 f"{e2e['finished']}/{e2e['documents']} finished ({e2e['failed']} failed) in {fmt(e2e['seconds'])} s"])
    rows.append(["model-serving alone, same texts", fmt(model["docs_per_s"]),
                 f"gRPC Predict + Embed, concurrency {model['concurrency']}"])
    alone = model["cpu_ms_per_document"]
    for kind, ms in e2e["cpu_ms_per_document"].items():
        if ms >= 0.5 or alone.get(kind, 0.0) >= 0.5:
            rows.append([f"CPU ms/document: {kind}", "",
                         f"end to end {fmt(ms)}, model-serving alone {fmt(alone.get(kind, 0.0))}"])
    for name, r in results["extraction"].items():
        rows.append([f"extract .{name}", "", f"{r['files']} files, median {fmt(r['median_ms'])} ms, "
                                             f"max {fmt(r['max_ms'])} ms, {fmt(r['mb_per_s'])} MB/s"])
    large = results["large_file"]
    rows.append([f"large file {large['bytes'] // MB} MB", "",
                 f"{fmt(large['mb_per_s'])} MB/s; upload RSS {fmt(large['upload_idle_mb'])} -> "
                 f"{fmt(large['upload_peak_mb'])} MB, gateway {fmt(large['gateway_idle_mb'])} -> "
                 f"{fmt(large['gateway_peak_mb'])} MB"])
    checks = [
        Check("end to end / model-serving throughput", e2e["docs_per_s"] / model["docs_per_s"], ">=", 0.8),
        Check("upload RSS growth during large file (MB)", large["upload_growth_mb"], "<", 100),
        Check("gateway RSS growth during large file (MB)", large["gateway_growth_mb"], "<", 100),
    ]
    return format_table(["measure", "documents/s", "detail"], rows), checks


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: ~100 documents, a 64 MB large file")
    parser.add_argument("--documents", type=int, help="end-to-end batch size (default 1000, --quick 100)")
    parser.add_argument("--upload-count", type=int, help="small uploads per concurrency level (500, --quick 100)")
    parser.add_argument("--large-mb", type=int, help="size of the large file in MB (1024, --quick 64)")
    parser.add_argument("--bulk-size", type=int, default=25, help="files per bulk request in the end-to-end phase")
    parser.add_argument("--e2e-timeout", type=float, default=1800.0)
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--samples", type=Path, default=SHARED / "samples")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--placement", choices=("split", "shared"),
                        help="CPU placement (module docstring); default split on 2+ CPUs, else shared")
    parser.add_argument("--no-tls", action="store_true",
                        help="gRPC and gateway->service HTTP without TLS (DOCTAG_GRPC_TLS=false): the cost of "
                             "mutual TLS is the difference to a run without this flag")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench" / "ingest.json")
    args = parser.parse_args(argv)
    args.documents = args.documents or (100 if args.quick else 1000)
    args.upload_count = args.upload_count or (100 if args.quick else 500)
    args.large_mb = args.large_mb or (64 if args.quick else 1024)
    args.placement = args.placement or ("split" if split_cpus() else "shared")
    return args


def run(args: argparse.Namespace, on_stack: Callable[[StackLayout, str], dict[str, Any]]) -> dict[str, Any]:
    """Starts a stack with its own database, prefix and state dir; always removes them."""
    run_id = uuid.uuid4().hex[:8]
    db_name = f"doctag_bench_{run_id}"
    state = Path(tempfile.mkdtemp(prefix="doctag-bench-", dir="/tmp"))
    admin_dsn = create_database(db_name)
    layout = StackLayout.with_free_ports(state, env={
        "DOCTAG_DB_HOST": DB_HOST, "DOCTAG_DB_PORT": str(DB_PORT), "DOCTAG_DB_NAME": db_name,
        "DOCTAG_AMQP_URL": AMQP_URL, "DOCTAG_AMQP_PREFIX": f"doctag-bench-{run_id}",
        "DOCTAG_RELAY_POLL_SECONDS": "0.2", "DOCTAG_MAX_UPLOAD_BYTES": str((args.large_mb + 16) * MB),
        "DOCTAG_MODEL_STORE": str(state / "models"),
        **({"DOCTAG_GRPC_TLS": "false"} if args.no_tls else {}),
    })
    layout.http_tls = not args.no_tls
    layout.gateway_template = gateway_template(state, args.large_mb + 64)
    pinned: dict[int, set[int]] = {}
    placement = split_cpus() if args.placement == "split" else None
    if placement is not None:
        rest, model = placement
        layout.cpu_affinity = {p.name: (model if p.name == "model-serving" else rest) for p in layout.programs()}
        rest_set = {int(c) for c in rest.split(",")}
        os.sched_setaffinity(0, rest_set)
        pinned = pin_servers(rest_set)
        log(f"CPU placement: model-serving on CPU {model}; the rest, PostgreSQL and RabbitMQ on CPU {rest}")
    try:
        log("starting the stack ...")
        layout.start()
        layout.wait_ready(timeout=600)
        return on_stack(layout, admin_dsn)
    finally:
        restore_servers(pinned)
        layout.stop()
        delete_topology(AMQP_URL, f"doctag-bench-{run_id}")
        drop_database(db_name)
        shutil.rmtree(state, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    log("extraction per format ...")
    extraction = bench_extraction(args.samples, repeat=1 if args.quick else 3)
    files = [as_file(i, r) for i, r in enumerate(korean_records(args.data_dir, args.documents, args.seed))]
    results = run(args, lambda layout, dsn: asyncio.run(bench_stack(args, layout, dsn, files)))
    results["extraction"] = extraction
    table, checks = report(results)
    print(f"CPU placement: {args.placement}")
    print(table)
    print()
    print(format_checks(checks))
    passed = all(c.passed for c in checks)
    print(f"\noverall: {'PASS' if passed else 'FAIL'}")
    meta = {"quick": args.quick, "placement": args.placement, "documents": args.documents,
            "upload_count": args.upload_count,
            "large_mb": args.large_mb, "bulk_size": args.bulk_size, "cpu_count": os.cpu_count(),
            "started_at": started, "wall_seconds": time.time() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results, "checks": [c.as_dict() for c in checks],
                                     "passed": passed}, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
