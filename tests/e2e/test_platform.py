"""End to end through the gateway: login, upload Korean TXT (UTF-8, CP949), PDF and DOCX,
tagging by the real worker and model, Korean search, tenant isolation, a worker crash."""
from __future__ import annotations

import io
import os
import signal
import time

import httpx
import pytest
from docx import Document as DocxDocument
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

pytestmark = pytest.mark.e2e

SPORTS = ("손흥민이 프리미어리그 경기에서 두 골을 터뜨리며 토트넘의 역전승을 이끌었다. "
          "축구 대표팀 감독은 경기 후 선수들의 활약을 칭찬했고, 토트넘은 리그 4위로 올라섰다. "
          "야구에서는 류현진이 시즌 10승째를 거두며 팀의 연승을 이어갔다.")
ECONOMY = ("정부는 내년 예산을 12조 원 늘리기로 했다. 기획재정부는 수출 부진과 금리 인상으로 경기가 둔화하자 "
           "재정 지출을 확대한다고 밝혔다. 코스피는 외국인 매수에 상승 마감했고 원달러 환율은 하락했다. "
           "한국은행은 기준금리를 동결했다.")
POLITICS = ("국회 본회의에서 여야는 선거법 개정안을 두고 충돌했다. 더불어민주당과 국민의힘 원내대표는 "
            "회동했지만 합의에 실패했고, 대통령은 국무회의에서 국회의 협조를 당부했다. 청와대 대변인은 "
            "야당의 반대를 비판했다.")
WORLD = ("미국 대통령과 중국 국가주석이 정상회담을 열고 무역 분쟁 해소 방안을 논의했다. "
         "유럽연합은 러시아에 대한 추가 제재를 발표했고, 일본 총리는 유엔 총회에서 연설했다. "
         "이란 외무장관은 핵 협상 재개를 촉구했다.")

PLAUSIBLE = {
    "sports.txt": {"스포츠", "문화/예술/체육/언론"},
    "경제_cp949.txt": {"경제", "경제민주화", "일자리", "성장동력"},
    "정치.pdf": {"정치", "정치개혁", "행정"},
    "world.docx": {"세계", "외교/통일/국방"},
}


def make_pdf(text: str) -> bytes:
    pdfmetrics.registerFont(UnicodeCIDFont("HYSMyeongJo-Medium"))
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.setFont("HYSMyeongJo-Medium", 11)
    y = 800
    for sentence in text.split(". "):
        pdf.drawString(40, y, sentence.strip())
        y -= 18
    pdf.save()
    return buf.getvalue()


def make_docx(text: str) -> bytes:
    doc = DocxDocument()
    doc.add_heading("국제 정세 동향", level=1)
    for sentence in text.split(". "):
        doc.add_paragraph(sentence.strip())
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def login(client: httpx.Client, account: tuple[str, str, str]) -> dict[str, str]:
    slug, username, password = account
    resp = client.post("/api/v1/auth/token", json={"tenant": slug, "username": username, "password": password})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    return {"Authorization": f"Bearer {body['access_token']}"}


def wait_final(client: httpx.Client, headers: dict[str, str], ids: list[str], timeout: float = 180) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    docs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        docs = {i: client.get(f"/api/v1/documents/{i}", headers=headers).json() for i in ids}
        if all(d["status"] in ("tagged", "failed") for d in docs.values()):
            return docs
        time.sleep(1)
    pending = {i: d["status"] for i, d in docs.items() if d["status"] not in ("tagged", "failed")}
    raise AssertionError(f"documents not processed in {timeout}s: {pending}")


@pytest.fixture(scope="module")
def client(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as c:
        yield c


def test_korean_documents_are_tagged_and_searchable_per_tenant(client, accounts) -> None:  # type: ignore[no-untyped-def]
    alice, bob = login(client, accounts["a"]), login(client, accounts["b"])
    files = {
        "sports.txt": (SPORTS.encode("utf-8"), "text/plain"),
        "경제_cp949.txt": (ECONOMY.encode("cp949"), "text/plain"),
        "정치.pdf": (make_pdf(POLITICS), "application/pdf"),
        "world.docx": (make_docx(WORLD), "application/octet-stream"),
    }
    ids = {}
    for name, (data, ctype) in files.items():
        resp = client.post("/api/v1/documents", headers=alice, files={"file": (name, data, ctype)})
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "queued" and resp.headers["x-request-id"]
        ids[name] = resp.json()["id"]

    docs = wait_final(client, alice, list(ids.values()))
    for name, doc_id in ids.items():
        doc = docs[doc_id]
        assert doc["status"] == "tagged", (name, doc)
        assert doc["tags"] and all(t["source"] == "model" and t["model_version"] for t in doc["tags"])
        # Plausibility (the shipped model, trained on ../shared/data): each document is clearly about one
        # topic, so its best-scored tag is one of the plausible ones; a random model over 24 labels would
        # miss most of them.
        best = max(doc["tags"], key=lambda t: t["score"])
        assert best["tag"] in PLAUSIBLE[name], (name, doc["tags"])

    # Korean search with another inflection than the text: the text says 예산을, the query 예산.
    hits = client.get("/api/v1/search", headers=alice, params={"q": "예산"}).json()
    assert ids["경제_cp949.txt"] in [h["id"] for h in hits["hits"]]
    assert "예산" in next(h for h in hits["hits"] if h["id"] == ids["경제_cp949.txt"])["snippet"]
    # 터뜨리며 (text) vs 터뜨리다 / 골 (query); 정상회담을 vs 정상회담.
    assert ids["sports.txt"] in [h["id"] for h in client.get(
        "/api/v1/search", headers=alice, params={"q": "손흥민 골"}).json()["hits"]]
    assert ids["world.docx"] in [h["id"] for h in client.get(
        "/api/v1/search", headers=alice, params={"q": "정상회담"}).json()["hits"]]
    assert ids["정치.pdf"] in [h["id"] for h in client.get(
        "/api/v1/search", headers=alice, params={"q": "선거법"}).json()["hits"]]

    # More like this, through the gateway, from the embeddings the worker stored at tagging time:
    # the department's other documents, never the document itself; 404 for the other department.
    similar = client.get(f"/api/v1/search/documents/{ids['sports.txt']}/similar", headers=alice)
    assert similar.status_code == 200, similar.text
    assert similar.json()["model"].startswith("multilingual-e5-small@")
    similar_ids = {h["id"] for h in similar.json()["hits"]}
    assert ids["sports.txt"] not in similar_ids and set(ids.values()) - {ids["sports.txt"]} <= similar_ids
    assert client.get(f"/api/v1/search/documents/{ids['sports.txt']}/similar", headers=bob).status_code == 404

    # The other department sees none of it.
    for doc_id in ids.values():
        assert client.get(f"/api/v1/documents/{doc_id}", headers=bob).status_code == 404
        assert client.get(f"/api/v1/documents/{doc_id}/content", headers=bob).status_code == 404
    assert client.get("/api/v1/search", headers=bob, params={"q": "예산"}).json()["hits"] == []
    assert client.get("/api/v1/documents", headers=bob).json()["items"] == []

    # The extracted text, through the gateway: CP949 decoded, paged in characters.
    text = client.get(f"/api/v1/documents/{ids['경제_cp949.txt']}/text", headers=alice)
    assert text.status_code == 200 and "예산" in text.text and text.headers["content-type"].endswith("utf-8")
    assert int(text.headers["x-text-length"]) == len(text.text)
    first = client.get(f"/api/v1/documents/{ids['경제_cp949.txt']}/text", headers=alice, params={"limit": 3})
    assert first.text == text.text[:3] and first.headers["x-next-offset"] == "3"
    assert client.get(f"/api/v1/documents/{ids['경제_cp949.txt']}/text", headers=bob).status_code == 404

    # The same bytes again answer with the existing document: nothing charged, nothing queued.
    again = client.post("/api/v1/documents", headers=alice, files={"file": ("again.txt", SPORTS.encode("utf-8"))})
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["id"] == ids["sports.txt"]

    # The original bytes come back unchanged, CP949 included.
    content = client.get(f"/api/v1/documents/{ids['경제_cp949.txt']}/content", headers=alice)
    assert content.content == ECONOMY.encode("cp949")
    quota = client.get("/api/v1/quota", headers=alice).json()
    assert quota["used_bytes"] == sum(len(d) for d, _ in files.values())


def test_requests_without_valid_token_are_refused(client, accounts) -> None:  # type: ignore[no-untyped-def]
    for method, path in (("GET", "/api/v1/documents"), ("GET", "/api/v1/search?q=예산"),
                         ("POST", "/api/v1/predict"), ("GET", "/api/v1/quota")):
        resp = client.request(method, path)
        assert resp.status_code == 401 and resp.headers["content-type"].startswith("application/problem+json")
    bad = client.post("/api/v1/auth/token", json={"tenant": accounts["a"][0], "username": "user1", "password": "nope"})
    assert bad.status_code == 401


def test_predict_through_gateway(client, accounts) -> None:  # type: ignore[no-untyped-def]
    headers = login(client, accounts["a"])
    resp = client.post("/api/v1/predict", headers=headers, json={"texts": [SPORTS, ECONOMY]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] and body["version"] and len(body["predictions"]) == 2
    assert body["predictions"][0]["tags"][0]["tag"] in PLAUSIBLE["sports.txt"]
    assert body["predictions"][1]["tags"][0]["tag"] in PLAUSIBLE["경제_cp949.txt"]
    scores = [t["score"] for t in body["predictions"][1]["tags"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)


def test_model_registry_through_gateway_is_for_platform_admins(client, accounts, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    """model-serving registered the shipped model at start and serves it as production; only a
    platform_admin reaches the registry (the gateway's acl and the service itself)."""
    import hashlib

    from services.cli import admin
    from services.model_serving.settings import DEFAULT_MODEL_DIR

    slug = accounts["a"][0]
    admin.create_user(admin_dsn, slug, "ops", "another long password", "platform_admin")
    ops, user = login(client, (slug, "ops", "another long password")), login(client, accounts["a"])
    for method, path in (("GET", "/api/v1/models"), ("GET", "/api/v1/models/doctag-tagger/versions"),
                         ("PUT", "/api/v1/models/doctag-tagger/aliases/candidate")):
        denied = client.request(method, path, headers=user, json={"version": 1} if method == "PUT" else None)
        assert denied.status_code == 403, (path, denied.text)
        assert denied.headers["content-type"].startswith("application/problem+json")

    models = {m["name"]: m for m in client.get("/api/v1/models", headers=ops).json()["models"]}
    assert models["doctag-tagger"]["aliases"]["production"] == 1
    versions = client.get("/api/v1/models/doctag-tagger/versions", headers=ops).json()["versions"]
    shipped = hashlib.sha256((DEFAULT_MODEL_DIR / "manifest.json").read_bytes()).hexdigest()
    assert versions[0]["manifest_sha256"] == shipped
    moved = client.put("/api/v1/models/doctag-tagger/aliases/candidate", headers=ops, json={"version": 1})
    assert moved.status_code == 200, moved.text
    # A well-formed request naming a version that does not exist: the registry answers 404 (RegistryNotFound),
    # naming the field; 422 is for malformed input (version 0, a bad alias name).
    missing = client.put("/api/v1/models/doctag-tagger/aliases/candidate", headers=ops, json={"version": 99})
    assert missing.status_code == 404, missing.text
    assert missing.json()["errors"][0]["field"] == "version"
    served = client.post("/api/v1/predict", headers=user, json={"text": SPORTS})
    assert served.status_code == 200 and served.json()["version"] == "1"


def _metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exposed")


def _worker_metric(stack, index: int, name: str) -> float | None:  # type: ignore[no-untyped-def]
    """`name` from tagging-worker-<index>'s /metrics; None while it does not answer (restarting)."""
    try:
        with stack.client(timeout=5) as worker_http:
            text = worker_http.get(f"https://{stack.host}:{stack.worker_ports[index - 1]}/metrics").text
    except httpx.HTTPError:
        return None
    return _metric(text, name)


def test_killing_a_worker_mid_batch_loses_no_document(client, accounts, stack) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL a worker while it provably holds unacknowledged jobs: the broker gives them to a worker
    again (counted as redeliveries) and every document still ends tagged."""
    headers = login(client, accounts["a"])
    victim = "tagging-worker-1"
    pid = int(stack.supervisorctl("pid", victim, check=True).stdout.strip())
    survivor_before = _worker_metric(stack, 2, "doctag_tagging_redeliveries_total")
    assert survivor_before is not None, "tagging-worker-2 does not answer /metrics"
    ids = []
    for i in range(16):
        text = f"{i}번째 보고서. " + (ECONOMY if i % 2 else SPORTS) * 3
        resp = client.post("/api/v1/documents", headers=headers, files={"file": (f"batch-{i}.txt", text.encode())})
        assert resp.status_code == 202
        ids.append(resp.json()["id"])

    # The gauge counts deliveries from receipt until they are settled; kill within the same moment.
    deadline = time.monotonic() + 60
    while (_worker_metric(stack, 1, "doctag_tagging_jobs_in_flight") or 0) < 1:
        assert time.monotonic() < deadline, f"{victim} never held a job in 60 s"
        time.sleep(0.05)  # poll interval
    os.kill(pid, signal.SIGKILL)  # supervisord restarts it

    docs = wait_final(client, headers, ids, timeout=240)
    assert [d["status"] for d in docs.values()] == ["tagged"] * len(ids), {i: d["error"] for i, d in docs.items()}
    # What the killed worker held came back from the broker: at least one job arrived as a redelivery.
    deadline = time.monotonic() + 60
    while (restarted := _worker_metric(stack, 1, "doctag_tagging_redeliveries_total")) is None:
        assert time.monotonic() < deadline, f"{victim} did not come back after the kill"
        time.sleep(0.5)  # poll interval
    assert int(stack.supervisorctl("pid", victim, check=True).stdout.strip()) != pid
    survivor = _worker_metric(stack, 2, "doctag_tagging_redeliveries_total")
    assert survivor is not None, "tagging-worker-2 does not answer /metrics"
    # The restarted worker counts from zero; the survivor's count grew by what it took over.
    assert restarted + survivor - survivor_before >= 1, "no job held by the killed worker was redelivered"
