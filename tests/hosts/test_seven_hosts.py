"""The platform on seven hosts, with failures injected (`make test-hosts`).

Seven network namespaces on the private bridge dtbr0 (10.77.0.0/24), one per VM of
services/cli/vm_layout.py: db 10.77.0.10, model .20, web-1 .30, web-2 .31, tagging-1 .40,
tagging-2 .41, gateway .50, and an attacker .99. The test client is the operator's machine
(10.77.0.1, the bridge's address in the root namespace) and talks to the platform through the
gateway's address only; the services' own ports are probed only to wait for readiness and to read
a worker's metrics, with the operator's client certificate.

Two ways to put the platform on the hosts (the scenarios are the same):

- `make test-hosts DEPLOY=bundles`: the deployment itself. An sshd runs in each namespace (run keys,
  strict host key checking) and `doctag deploy all --inventory <the seven test hosts>` (service_manager
  supervisor, service_user null, per-host install_root/config_dir/state_dir under the run's temp
  dir, one blob_dir for both web hosts) copies each role's offline bundle from dist/ over SSH, runs
  its install.sh (offline venv in `<host>/opt/<version>`, `current`), writes the host's files, sets
  the db host up with `doctag dbhost setup --no-systemd` (PostgreSQL, RabbitMQ, Redis with TLS on
  10.77.0.10) and starts the units' command lines under supervisord. The db host's servers are
  restarted with `doctag dbhost restart` (scenario 5).
- `make test-hosts` (the default, part of `make test`): the same layout without bundles: the
  services run from this checkout's virtualenv, configured by the test (tests/hosts/platform.py:
  per-host certificates naming the host's address, only its roles' secrets, its peers' addresses),
  and the db host's servers are started by the test (tests/hosts/dbhost.py: pg_ctl as postgres,
  a RabbitMQ node of its own, redis-server, the deployment's pg_hba.conf, per-service users, a Redis
  password; PostgreSQL without TLS). It needs no bundle build and no SSH, so it stays short.

What both replace, and why: systemd. It is PID 1 of a whole machine and cannot run once per network
namespace, so each namespace runs one supervisord with the same `python -m <module>` command lines
and environment files as the `doctag-<service>.service` units (`service_manager: supervisor`);
restart-on-failure is supervisord's `autorestart`, and the units' hardening (User=, ProtectSystem=,
MemoryMax=) is not exercised here (`systemd-analyze verify` checks the units elsewhere). Both web
hosts use one directory as the shared blob mount (what CephFS/NFS gives two VMs).

Each scenario counts documents on the db host: every accepted upload ends `tagged` or `failed`
with a reason, exactly once (no duplicates). Waits are bounded in time; loads in count.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import vm_layout
from tests.conftest import SAMPLES
from tests.hosts import netns
from tests.hosts.conftest import Seven, document_rows
from tests.hosts.platform import DB, MODEL, TAGGING, WEB

pytestmark = pytest.mark.hosts

Departments = dict[str, tuple[str, str, str]]

REPO = Path(__file__).resolve().parents[2]
FINAL = ("tagged", "failed")

SPORTS = ("손흥민이 프리미어리그 경기에서 두 골을 터뜨리며 토트넘의 역전승을 이끌었다. "
          "축구 대표팀 감독은 경기 후 선수들의 활약을 칭찬했고, 야구에서는 류현진이 시즌 10승째를 거두었다.")
ECONOMY = ("정부는 내년 예산을 12조 원 늘리기로 했다. 기획재정부는 수출 부진과 금리 인상으로 경기가 둔화하자 "
           "재정 지출을 확대한다고 밝혔다. 한국은행은 기준금리를 동결했다.")

# (sample file, a query its text answers) for each binary format, from ../shared/samples.
SAMPLE_FILES = {
    "hwp/pyhwp__sample-5017.hwp": "프로세서",
    "hwpx/hwpxlib__textextractor__multipara.hwpx": "김하성",
    "pdf/odl__2125318_의사국 의안과_의안원문_hwp.pdf": "탄소중립",
    "docx/langchain-kr__sample-word-document.docx": None,
    "txt/langchain-kr__appendix-keywords-CP949.txt": "키워드",
}
ENCRYPTED = "hwp/pyhwp__password-12345.hwp"
# Text formats the samples do not cover, generated here.
GENERATED = {
    "회의록.md": ("# 예산 심의 회의록\n\n" + ECONOMY).encode(),
    "보도자료.html": f"<html><body><h1>체육 소식</h1><p>{SPORTS}</p><script>x=1</script></body></html>".encode(),
    "통계.csv": "항목,금액\n예산 증액,12조 원\n기준금리,동결\n".encode(),
    "공지.xml": f"<?xml version='1.0' encoding='UTF-8'?><공지><본문>{ECONOMY}</본문></공지>".encode(),
    "경제_utf16.txt": ECONOMY.encode("utf-16"),
}


# ------------------------------------------------------------------ helpers


def login(client: httpx.Client, account: tuple[str, str, str]) -> dict[str, str]:
    slug, username, password = account
    resp = client.post("/api/v1/auth/token", json={"tenant": slug, "username": username, "password": password})
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def wait_final(client: httpx.Client, headers: dict[str, str], ids: list[str],
               timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    docs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for i in ids:
            if docs.get(i, {}).get("status") in FINAL:
                continue
            resp = client.get(f"/api/v1/documents/{i}", headers=headers)
            if resp.status_code == 200:
                docs[i] = resp.json()
        if all(docs.get(i, {}).get("status") in FINAL for i in ids):
            return docs
        time.sleep(1)  # poll interval
    pending = {i: docs.get(i, {}).get("status") for i in ids if docs.get(i, {}).get("status") not in FINAL}
    raise AssertionError(f"{len(pending)} of {len(ids)} documents not final after {timeout:.0f}s: {pending}")


def assert_accounted(seven: Seven, slug: str, accepted: dict[str, str], prefix: str) -> None:
    """On the db host: the department's documents named `prefix*` are exactly the accepted ones, once
    each, every one `tagged` or `failed` with a reason."""
    rows = [r for r in document_rows(seven.admin_dsn, slug) if r[1].startswith(prefix)]
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == len(accepted), (len(ids), len(set(ids)), len(accepted))
    assert set(ids) == set(accepted.values()), "documents stored that no answer accepted, or accepted and lost"
    assert len({r[1] for r in rows}) == len(rows), "a file was stored twice"
    for _id, name, status, error in rows:
        assert status == "tagged" or (status == "failed" and error), (name, status, error)


@dataclass
class Load:
    """Uploads `count` distinct documents one after another through the gateway, each retried (at
    most `attempts` times, as a client does after a 5xx or a timeout), and searches after each;
    bounded by count and by `deadline_s`."""

    client: httpx.Client
    headers: dict[str, str]
    prefix: str
    count: int
    attempts: int = 4
    deadline_s: float = 240
    accepted: dict[str, str] = field(default_factory=dict)      # file name -> document id
    upload_errors: list[str] = field(default_factory=list)      # attempts that failed (retried)
    search_errors: list[str] = field(default_factory=list)
    searches_ok: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def _try(self, call: Callable[[], httpx.Response], ok: tuple[int, ...], errors: list[str]) -> httpx.Response | None:
        for attempt in range(self.attempts):
            try:
                resp = call()
                if resp.status_code in ok:
                    return resp
                errors.append(f"{resp.status_code} {resp.text[:120]}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            time.sleep(min(2.0 * (attempt + 1), 5.0))  # back-off before the client's retry
        return None

    def run(self) -> None:
        start = time.monotonic()
        try:
            for i in range(self.count):
                if time.monotonic() - start > self.deadline_s:
                    break
                name = f"{self.prefix}{i:03d}.txt"
                body = f"{self.prefix} {i}번째 보고서입니다. {ECONOMY if i % 2 else SPORTS}".encode()
                def upload(name: str = name, body: bytes = body) -> httpx.Response:
                    return self.client.post("/api/v1/documents", headers=self.headers,
                                            files={"file": (name, body, "text/plain")})

                resp = self._try(upload, (200, 202), self.upload_errors)
                if resp is not None:
                    self.accepted[name] = resp.json()["id"]
                found = self._try(lambda: self.client.get("/api/v1/search", headers=self.headers,
                                                          params={"q": "보고서"}), (200,), self.search_errors)
                self.searches_ok += found is not None
        finally:
            self.done.set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def wait_until(self, uploads: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < uploads and not self.done.is_set():
            assert time.monotonic() < deadline, f"only {len(self.accepted)} uploads accepted in {timeout:.0f}s"
            time.sleep(0.2)  # poll interval


def worker_metric(seven: Seven, host: netns.Host, name: str) -> float | None:
    """An unlabelled sample from a tagging worker's /metrics (None while it does not answer)."""
    try:
        with seven.platform.client(timeout=5) as client:
            text = client.get(f"https://{host.address}:{vm_layout.TAGGING_WORKER.http_port}/metrics").text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def sessions_of(seven: Seven, host: netns.Host) -> list[tuple[Any, ...]]:
    """The db host's sessions from one host (diagnostics: a cut-off host's open transactions)."""
    import psycopg

    with psycopg.connect(seven.admin_dsn) as conn:
        return conn.execute("SELECT usename, application_name, state, xact_start, left(query, 80) "
                            "FROM pg_stat_activity WHERE client_addr = %s", (host.address,)).fetchall()


@pytest.fixture(scope="module")
def client(seven: Seven) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=seven.platform.gateway_url, timeout=20) as c:
        yield c


# ------------------------------------------------------------------ scenarios


def test_1_whole_flow_through_the_gateway_address(seven: Seven, client: httpx.Client, departments: Departments) -> None:
    alice, bob = login(client, departments["a"]), login(client, departments["b"])
    files = {Path(p).name: (SAMPLES / p).read_bytes() for p in (*SAMPLE_FILES, ENCRYPTED)}
    files.update(GENERATED)
    ids: dict[str, str] = {}
    for name, data in files.items():
        resp = client.post("/api/v1/documents", headers=alice, files={"file": (f"flow-{name}", data)})
        assert resp.status_code == 202, (name, resp.text)
        assert resp.json()["status"] == "queued"
        ids[f"flow-{name}"] = resp.json()["id"]
    # The other department uploads the same PDF: its own document, not a duplicate of alice's.
    pdf = Path(next(p for p in SAMPLE_FILES if p.endswith(".pdf"))).name
    theirs = client.post("/api/v1/documents", headers=bob, files={"file": (f"flow-{pdf}", files[pdf])})
    assert theirs.status_code == 202, theirs.text

    docs = wait_final(client, alice, list(ids.values()), timeout=240)
    wait_final(client, bob, [theirs.json()["id"]], timeout=120)
    for name, doc_id in ids.items():
        doc = docs[doc_id]
        if name == f"flow-{Path(ENCRYPTED).name}":
            assert doc["status"] == "failed" and ("암호" in doc["error"] or "encrypt" in doc["error"].lower()), doc
            continue
        assert doc["status"] == "tagged", (name, doc["status"], doc.get("error"))
        assert doc["tags"] and all(t["source"] == "model" and t["model_version"] for t in doc["tags"]), name
    assert_accounted(seven, departments["a"][0], ids, "flow-")

    for path, query in SAMPLE_FILES.items():
        if query is None:
            continue
        hits = client.get("/api/v1/search", headers=alice, params={"q": query})
        assert hits.status_code == 200, hits.text
        assert ids[f"flow-{Path(path).name}"] in [h["id"] for h in hits.json()["hits"]], (query, hits.json())
    docx = ids["flow-" + Path("docx/langchain-kr__sample-word-document.docx").name]
    extracted = client.get(f"/api/v1/documents/{docx}/text", headers=alice)
    assert extracted.status_code == 200 and any("가" <= ch <= "힣" for ch in extracted.text)

    # The other department: its own PDF found, nothing of alice's, every one of her documents 404.
    bob_hits = client.get("/api/v1/search", headers=bob, params={"q": "탄소중립"}).json()["hits"]
    assert [h["id"] for h in bob_hits] == [theirs.json()["id"]]
    for doc_id in ids.values():
        assert client.get(f"/api/v1/documents/{doc_id}", headers=bob).status_code == 404
        assert client.get(f"/api/v1/documents/{doc_id}/content", headers=bob).status_code == 404
    # The gateway shares its login throttle and rate-limit counters through Redis on the db host:
    # had it no access (address, password), it would fail open and count nothing, silently.
    metrics = seven.platform.gateway_metrics()
    for counter in ("doctag_gateway_login_throttle_store_errors_total", "doctag_gateway_rate_limit_store_errors_total"):
        values = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(counter)]
        assert sum(values) == 0, f"the gateway cannot use Redis on the db host: {counter} = {values}"
    # The original bytes come back unchanged from the shared blob store, through either web host.
    for _ in range(2):
        content = client.get(f"/api/v1/documents/{ids['flow-' + pdf]}/content", headers=alice)
        assert content.status_code == 200 and content.content == files[pdf]


def test_2_web_host_cut_off_mid_load(seven: Seven, client: httpx.Client, departments: Departments) -> None:
    headers = login(client, departments["a"])
    load = Load(client, headers, "webcut-", count=30)
    thread = load.start()
    load.wait_until(5)
    netns.set_link(WEB[0], up=False)
    cut_at = len(load.accepted)
    try:
        thread.join(timeout=load.deadline_s + 30)
        assert not thread.is_alive(), "the load did not finish in time"
        print(f"\nweb-1 cut after {cut_at} uploads: {len(load.accepted)}/30 accepted, "
              f"{len(load.upload_errors)} upload attempts failed {load.upload_errors[:5]}, "
              f"{len(load.search_errors)} search attempts failed {load.search_errors[:5]}")
        assert len(load.accepted) == 30, f"uploads not accepted: {load.upload_errors}"
        assert load.searches_ok == 30, f"searches failed: {load.search_errors}"
        try:
            docs = wait_final(client, headers, list(load.accepted.values()), timeout=180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nweb-1's sessions on the db host: {sessions_of(seven, WEB[0])}") from None
        assert {d["status"] for d in docs.values()} == {"tagged"}
        assert_accounted(seven, departments["a"][0], load.accepted, "webcut-")
    finally:
        netns.set_link(WEB[0], up=True)
    seven.platform.wait_ready((WEB[0],), timeout=120)


def test_3_tagging_host_killed_mid_batch(seven: Seven, client: httpx.Client, departments: Departments) -> None:
    headers = login(client, departments["a"])
    victim, survivor = TAGGING
    ids: dict[str, str] = {}
    for i in range(16):
        text = f"{i}번째 일괄 문서. " + (ECONOMY if i % 2 else SPORTS) * 3
        resp = client.post("/api/v1/documents", headers=headers, files={"file": (f"kill-{i:02d}.txt", text.encode())})
        assert resp.status_code == 202, resp.text
        ids[f"kill-{i:02d}.txt"] = resp.json()["id"]
    deadline = time.monotonic() + 60
    while (worker_metric(seven, victim, "doctag_tagging_jobs_in_flight") or 0) < 1:
        assert time.monotonic() < deadline, f"{victim.name} never held a job in 60 s"
        time.sleep(0.05)  # poll interval
    killed = netns.kill_all(victim.netns)  # supervisord and the worker: the host is gone
    assert killed and not netns.pids(victim.netns)
    try:
        docs = wait_final(client, headers, list(ids.values()), timeout=240)
        assert {d["status"] for d in docs.values()} == {"tagged"}, {n: docs[i]["error"] for n, i in ids.items()}
        assert_accounted(seven, departments["a"][0], ids, "kill-")
        assert (worker_metric(seven, survivor, "doctag_tagging_redeliveries_total") or 0) >= 1, \
            "no job held by the killed host was redelivered to the other"
    finally:
        seven.platform.start(victim)
    seven.platform.wait_ready((victim,), timeout=120)


def test_4_model_host_unreachable_for_30s(seven: Seven, client: httpx.Client, departments: Departments) -> None:
    headers = login(client, departments["a"])
    netns.set_link(MODEL, up=False)
    ids: dict[str, str] = {}
    try:
        for i in range(6):
            text = f"모델 중단 중 {i}번째 문서. " + (ECONOMY if i % 2 else SPORTS)
            resp = client.post("/api/v1/documents", headers=headers, files={"file": (f"model-{i}.txt", text.encode())})
            assert resp.status_code == 202, resp.text
            ids[f"model-{i}.txt"] = resp.json()["id"]
        seen: set[str] = set()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            for doc_id in ids.values():
                seen.add(client.get(f"/api/v1/documents/{doc_id}", headers=headers).json()["status"])
            time.sleep(2)  # poll interval
        assert seen <= {"queued", "processing"}, f"while the model host was away documents became {seen}"
    finally:
        netns.set_link(MODEL, up=True)
    docs = wait_final(client, headers, list(ids.values()), timeout=180)
    assert {d["status"] for d in docs.values()} == {"tagged"}, {i: d["error"] for i, d in docs.items()}
    assert_accounted(seven, departments["a"][0], ids, "model-")


def test_5_postgres_and_rabbitmq_restarted_under_load(seven: Seven, client: httpx.Client,
                                                      departments: Departments) -> None:
    headers = login(client, departments["b"])
    load = Load(client, headers, "dbrestart-", count=30, attempts=6)
    thread = load.start()
    load.wait_until(5)
    seven.db.restart_postgres()
    load.wait_until(12)
    seven.db.restart_rabbitmq()
    thread.join(timeout=load.deadline_s + 30)
    assert not thread.is_alive(), "the load did not finish in time"
    print(f"\nrestarts under load: {len(load.accepted)}/30 accepted, {len(load.upload_errors)} upload attempts "
          f"failed {load.upload_errors[:5]}, {len(load.search_errors)} search attempts failed")
    assert len(load.accepted) == 30, f"uploads not accepted: {load.upload_errors}"
    docs = wait_final(client, headers, list(load.accepted.values()), timeout=240)
    assert {d["status"] for d in docs.values()} == {"tagged"}, {i: d["error"] for i, d in docs.items()}
    assert_accounted(seven, departments["b"][0], load.accepted, "dbrestart-")


def test_6_attacker_without_certificates_is_refused(seven: Seven) -> None:
    ca = seven.platform.ca_dir / "ca.crt"
    argv = netns.in_ns(netns.ATTACKER, [seven.platform.python, "-m", "tests.hosts.attacker_probe", str(ca)])
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in results.items()))
    assert results.pop("control: gateway proxy") == "answered 401"
    grpc_ports = {f"{s.name}-grpc" for r in vm_layout.ROLES for s in r.services if s.grpc_port}
    http_ports = {f"{s.name}-http" for r in vm_layout.ROLES for s in r.services if s.name != "gateway"}
    probed = {k.split("@")[0] for k in results}
    assert grpc_ports | http_ports | {"gateway-status", "postgres", "rabbitmq", "redis"} == probed
    opened = {k: v for k, v in results.items() if not v.startswith("refused")}
    assert not opened, opened
    assert "pg_hba.conf" in results[f"postgres@{DB.name}"]
