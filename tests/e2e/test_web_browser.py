"""The web UI in a real browser (Debian's Chromium, headless, driven by Playwright) against the whole
stack through the gateway: log in, upload real Korean documents and watch their tags appear, search,
read and correct a document, re-login without losing the page, another department's document refused,
an attacker's title shown as text, the quota warning and refusal, the audit log, a model promotion
and its candidate's shadow mode switched on, a training dataset uploaded, its gate report read and
approved, and training jobs started, limited and cancelled.

Screenshots of every screen are written to var/screenshots/ (not committed) for a person to look at.
The tests run in order and build on each other's documents (one department's day, start to end).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Playwright, expect, sync_playwright

from services.cli import admin
from services.cli.stack import StackLayout
from services.common.db import Database
from services.model_serving.registry import ModelRegistry, RegistrySettings
from tests.conftest import DATA, DB_HOST, DB_PORT, REPO, SAMPLES
from tests.model_artifacts import make_tiny_bert

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "var" / "screenshots"
PASSWORD = "correct horse battery"
XSS_TITLE = "<img src=x onerror=alert(1)>"
UPLOADS = {
    "pdf": SAMPLES / "pdf" / "odl__2125318_의사국 의안과_의안원문_hwp.pdf",
    "docx": SAMPLES / "docx" / "langchain-kr__sample-word-document.docx",
    "hwp": SAMPLES / "hwp" / "pyhwp__sample-5017.hwp",
    "hwpx": SAMPLES / "hwpx" / "hwpxlib__20240919__테스트문서.hwpx",
}
ENCRYPTED = SAMPLES / "hwp" / "pyhwp__password-12345.hwp"
TAGGING_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def people(stack: StackLayout, admin_dsn: str) -> dict[str, tuple[str, str]]:
    """Departments of their own (other e2e tests upload into theirs): name -> (tenant, username)."""
    suffix = uuid.uuid4().hex[:6]
    a, b, small = f"web-a-{suffix}", f"web-b-{suffix}", f"web-q-{suffix}"
    admin.create_tenant(admin_dsn, a, "기획재정담당관", 50 * 1024 * 1024)
    admin.create_tenant(admin_dsn, b, "문화예술과", 50 * 1024 * 1024)
    admin.create_tenant(admin_dsn, small, "소규모팀", 100_000)
    admin.create_user(admin_dsn, a, "kim", PASSWORD, "user")
    admin.create_user(admin_dsn, a, "chief", PASSWORD, "tenant_admin")
    admin.create_user(admin_dsn, a, "root", PASSWORD, "platform_admin")
    admin.create_user(admin_dsn, b, "lee", PASSWORD, "user")
    admin.create_user(admin_dsn, small, "park", PASSWORD, "user")
    return {"user": (a, "kim"), "chief": (a, "chief"), "root": (a, "root"), "other": (b, "lee"),
            "small": (small, "park")}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail("the browser tests need Debian's Chromium at /usr/bin/chromium: `make browser` installs it")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--lang=ko-KR"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.close()


class Session:
    """One person's browser window: console errors and unexpected dialogs are collected (a test fails
    on them); confirmation dialogs are accepted as a person would."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ko-KR",
                                           base_url=base)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.alerts: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        # Console errors (a refused inline script or style among them) fail the test; answers with an
        # error status that a test provokes on purpose (401, 404, 507) are not page errors.
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" and
                     "the server responded with a status of" not in m.text else None)

    def _dialog(self, dialog: Dialog) -> None:
        if dialog.type == "confirm":
            dialog.accept()
        else:
            self.alerts.append(dialog.message)
            dialog.dismiss()

    def login(self, tenant: str, username: str, password: str = PASSWORD) -> Page:
        page = self.page
        page.goto("/login")
        page.fill("#tenant", tenant)
        page.fill("#username", username)
        page.fill("#password", password)
        page.click("form[action='/login'] button[type=submit]")
        return page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        assert self.alerts == [], f"a script ran a dialog: {self.alerts}"
        assert self.errors == [], f"the page had errors: {self.errors}"
        self.context.close()


@pytest.fixture
def open_session(browser: Browser, stack: StackLayout) -> Iterator[Any]:
    sessions: list[Session] = []

    def make() -> Session:
        sessions.append(Session(browser, stack.gateway_url))
        return sessions[-1]

    yield make
    for s in sessions:
        s.close()


STATE: dict[str, Any] = {}


def api_token(stack: StackLayout, tenant: str, username: str) -> str:
    r = httpx.post(f"{stack.gateway_url}/api/v1/auth/token", timeout=30,
                   json={"tenant": tenant, "username": username, "password": PASSWORD})
    r.raise_for_status()
    return str(r.json()["access_token"])


def korean_text_of(size: int) -> bytes:
    """UTF-8 Korean text of exactly `size` bytes (whole characters, padded with spaces)."""
    line = "2027년 예산안 편성 지침과 부처별 요구 현황을 정리한 자료.\n".encode()
    data = line * (size // len(line))
    return data + b" " * (size - len(data))


def row(page: Page, filename: str) -> Any:
    return page.locator("#upload-rows tr", has=page.locator(".file-name", has_text=filename))


def test_login_with_korean_errors(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.locator("html")).to_have_attribute("lang", "ko")
    s.shot("01-login")
    tenant, user = people["user"]
    s.login(tenant, user, "wrong password")
    expect(page.locator("#login-error")).to_have_text("부서 코드, 사용자 이름 또는 비밀번호가 올바르지 않습니다.")
    expect(page.locator("#tenant")).to_have_value(tenant)  # what was typed stays, the password does not
    expect(page.locator("#password")).to_have_value("")
    s.shot("02-login-error")
    s.login("Finance!", user)
    expect(page.locator("#tenant-error")).to_contain_text("부서 코드는")
    expect(page.locator("#tenant")).to_have_attribute("aria-invalid", "true")
    s.login(tenant, user)
    expect(page).to_have_url(re.compile(r"/documents$"))
    expect(page.locator(".empty h2")).to_have_text("문서가 없습니다")
    s.shot("03-documents-empty")


def test_upload_korean_documents_and_watch_tags_appear(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    page.click("nav >> text=업로드")
    expect(page.locator("h1")).to_have_text("문서 업로드")
    page.set_input_files("#files", [str(p) for p in (*UPLOADS.values(), ENCRYPTED)])
    expect(page.locator("#upload-rows tr")).to_have_count(5)
    for path in UPLOADS.values():
        expect(row(page, path.name).locator("progress")).to_have_attribute("value", "100", timeout=120_000)
    s.shot("04-upload-progress")
    # Statuses change without a reload: queued/processing first, then tagged with the model's tags.
    for path in UPLOADS.values():
        r = row(page, path.name)
        expect(r).to_have_attribute("data-status", "tagged", timeout=TAGGING_TIMEOUT_MS)
        expect(r.locator(".file-tags .chip").first).to_be_visible()
        STATE.setdefault("ids", {})[path.suffix] = r.locator(".file-name a").get_attribute("href").rsplit("/", 1)[-1]
    failed = row(page, ENCRYPTED.name)
    expect(failed).to_have_attribute("data-status", "failed", timeout=TAGGING_TIMEOUT_MS)
    expect(failed.locator(".file-status")).to_contain_text("암호가 걸린 파일이라 읽을 수 없습니다")
    expect(page.locator("#overall-progress")).to_have_attribute("value", "100")
    expect(page.locator("#upload-summary")).to_have_text("5개 중 완료 4 · 실패 1 · 거부 0")
    # The same bytes again: the existing document, said plainly, nothing stored twice.
    page.set_input_files("#files", [str(UPLOADS["hwp"])])
    expect(page.locator("#upload-rows tr")).to_have_count(6)
    duplicate = page.locator("#upload-rows tr").nth(5)
    expect(duplicate).to_have_attribute("data-status", "duplicate", timeout=60_000)
    expect(duplicate).to_contain_text("같은 내용의 문서가 이미 있어 새로 저장하지 않았습니다.")
    s.shot("05-upload-tagged")


def test_documents_list_filters_and_keyboard(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    rows = page.locator("#doc-table tbody tr")
    expect(rows).to_have_count(5)
    expect(page.locator("#doc-table")).to_contain_text("kim")  # uploaded by
    s.shot("06-documents")
    page.keyboard.press("j")
    expect(rows.nth(0).locator("a")).to_be_focused()
    page.keyboard.press("j")
    expect(rows.nth(1).locator("a")).to_be_focused()
    page.keyboard.press("k")
    expect(rows.nth(0).locator("a")).to_be_focused()
    title = rows.nth(0).locator(".doc-title a").inner_text()
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text(title)
    page.go_back()
    page.select_option("#f-status", "failed")
    page.click("form.filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("pyhwp__password-12345")
    page.goto("/documents?sort=title")
    titles = [t.strip() for t in page.locator("#doc-table .doc-title a").all_inner_texts()]
    assert titles == sorted(titles, key=str.casefold)
    page.goto("/documents?since=2000-01-01&until=2000-12-31")
    expect(page.locator(".empty")).to_contain_text("조건에 맞는 문서가 없습니다")


def test_search_korean_query_and_click_a_facet(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    page.click("nav >> text=검색")
    page.fill("#q", "탄소중립 기본계획")
    page.keyboard.press("Enter")
    hits = page.locator(".hits .hit")
    expect(hits.first).to_be_visible()
    first = page.locator(f".hit a[href='/documents/{STATE['ids']['.pdf']}']")
    expect(first).to_be_visible()
    expect(page.locator(".hit .snippet mark").first).to_be_visible()
    s.shot("07-search")
    facet = page.locator(".facets .facet").first
    tag = facet.locator("span").first.inner_text()
    facet.click()
    expect(page).to_have_url(re.compile(r"tag=" + re.escape(quote(tag, safe=""))))
    expect(page.locator(".facets .facet-on")).to_contain_text(tag)
    expect(hits.first).to_be_visible()
    for hit in hits.all():
        expect(hit.locator(".chip", has_text=tag).first).to_be_visible()
    s.shot("08-search-facet")
    # A quoted phrase no document contains as written: its words are searched instead, and the page says so.
    page.goto("/search?q=" + quote('"기본계획 탄소중립"'))
    expect(page.locator("#relaxed-phrases")).to_contain_text("기본계획 탄소중립")
    expect(page.locator(f".hit a[href='/documents/{STATE['ids']['.pdf']}']")).to_be_visible()
    # Hybrid search may find a close semantic neighbour for any text (search's fusion_min_sim), so
    # the empty answer comes from a date range with no uploads.
    page.fill("#q", "존재하지않는낱말쀍")
    page.fill("#s-to", "2000-01-01")
    page.keyboard.press("Enter")
    expect(page.locator(".card.empty")).to_contain_text("검색 결과가 없습니다")


def test_search_filters_by_file_type_date_and_order(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    page.goto("/search?q=" + quote("탄소중립 기본계획"))
    page.select_option("#s-type", "pdf")
    page.select_option("#s-sort", "date")
    page.click("form.search-box button[type=submit]")
    expect(page).to_have_url(re.compile(r"type=pdf"))
    expect(page).to_have_url(re.compile(r"sort=date"))
    expect(page.locator(f".hit a[href='/documents/{STATE['ids']['.pdf']}']")).to_be_visible()
    expect(page.locator(f".hit a[href='/documents/{STATE['ids']['.docx']}']")).to_have_count(0)
    expect(page.locator("#s-type")).to_have_value("pdf")
    # the filters survive a click on a facet
    page.locator(".facets .facet").first.click()
    expect(page).to_have_url(re.compile(r"type=pdf"))
    page.fill("#s-from", "2000-01-01")
    page.fill("#s-to", "2000-12-31")
    page.click("form.search-box button[type=submit]")
    expect(page.locator(".card.empty")).to_contain_text("검색 결과가 없습니다")


def test_read_a_document_and_correct_its_tags(open_session, people, stack) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    doc_id = STATE["ids"][".pdf"]
    page.goto(f"/documents/{doc_id}")
    expect(page.locator("#doc-text")).to_contain_text("탄소중립")
    expect(page.locator(".meta")).to_contain_text("kim")
    model_tags = page.locator("#tags .tag-row:has(input[name=source][value=model])")
    expect(model_tags.first.locator("meter")).to_be_visible()
    expect(model_tags.first).to_contain_text("모델 v")
    removed = model_tags.first.locator(".tag-name").inner_text()
    count = model_tags.count()
    s.shot("09-document")
    model_tags.first.locator("button").click()
    expect(page.locator(".notice-ok")).to_have_text("태그를 삭제했습니다.")
    expect(model_tags).to_have_count(count - 1)
    page.fill("#new-tag", "검토필요")
    page.click("form.tag-add button")
    expect(page.locator(".notice-ok")).to_have_text("태그를 추가했습니다.")
    expect(page.locator("#tags .chip-user")).to_have_text("검토필요")
    s.shot("10-document-tags-corrected")
    # Search sees the person's tag and no longer the removed one.
    page.goto("/search?tag=" + quote("검토필요"))
    expect(page.locator(f".hit a[href='/documents/{doc_id}']")).to_be_visible()
    token = api_token(stack, *people["user"])
    doc = httpx.get(f"{stack.gateway_url}/api/v1/documents/{doc_id}", timeout=30,
                    headers={"Authorization": f"Bearer {token}"}).json()
    assert {"tag": "검토필요", "source": "user"} in [{"tag": t["tag"], "source": t["source"]} for t in doc["tags"]]
    assert removed not in [t["tag"] for t in doc["tags"] if t["source"] == "model"]
    # Download of the original: the same bytes, the Korean name kept.
    with page.expect_download() as info:
        page.goto(f"/documents/{doc_id}")
        page.click("text=원본 내려받기")
    download = info.value
    assert download.suggested_filename == UPLOADS["pdf"].name
    assert Path(download.path()).read_bytes() == UPLOADS["pdf"].read_bytes()


def test_delete_and_restore_from_the_deleted_documents(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    doc_id = STATE["ids"][".docx"]
    page.goto(f"/documents/{doc_id}")
    title = page.locator("h1").inner_text()
    page.click("form[action$='/delete'] button")  # confirmed in the dialog
    expect(page.locator(".notice-ok")).to_contain_text("문서를 삭제했습니다")
    expect(page.locator("#doc-table")).not_to_contain_text(title)
    page.click("a[href='/documents?deleted=1']")
    expect(page.locator("h1")).to_have_text("삭제한 문서")
    deleted = page.locator("#deleted-table tbody tr", has_text=title)
    expect(deleted).to_have_count(1)
    s.shot("11-deleted-documents")
    deleted.locator("button", has_text="복원").click()
    expect(page.locator(".notice-ok")).to_have_text("문서를 복원했습니다.")
    expect(page.locator("h1")).to_have_text(title)
    expect(page.locator(".doc-status")).to_contain_text("태깅 완료")


def test_relogin_in_a_dialog_keeps_the_page(open_session, people, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["user"])
    page.goto("/upload")
    page.context.clear_cookies()  # as when the session expires while the page stays open
    note = tmp_path / "회의록.txt"
    note.write_text("주간 회의록: 예산 집행 현황과 다음 달 계획을 논의했다.\n", encoding="utf-8")
    page.set_input_files("#files", [str(note)])
    dialog = page.locator("#relogin")
    expect(dialog).to_be_visible()
    s.shot("12-relogin")
    page.fill("#relogin-password", "wrong password")
    page.click("#relogin-form button[type=submit]")
    expect(page.locator("#relogin-error")).to_contain_text("올바르지 않습니다")
    page.fill("#relogin-password", PASSWORD)
    page.click("#relogin-form button[type=submit]")
    expect(dialog).to_be_hidden()
    # The upload that met the expired session went on after the login, on the same page.
    expect(row(page, note.name)).to_have_attribute("data-status", re.compile("queued|processing|tagged"))
    expect(page).to_have_url(re.compile(r"/upload$"))


def test_another_department_is_refused(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["other"])
    doc_id = STATE["ids"][".pdf"]
    response = page.goto(f"/documents/{doc_id}")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("찾을 수 없습니다")
    expect(page.locator("main [role=alert]")).to_contain_text("다른 부서의 문서")
    s.shot("13-other-department-refused")
    response = page.goto(f"/documents/{doc_id}/download")
    assert response is not None and response.status == 404
    page.goto("/search?q=" + quote("탄소중립"))
    expect(page.locator(f".hit a[href='/documents/{doc_id}']")).to_have_count(0)
    # A form posted from another site is refused even with the victim's cookie.
    response = page.request.post(f"/documents/{doc_id}/delete", form={"csrf": "guess"},
                                 headers={"Origin": "http://evil.example"})
    assert response.status == 403


def test_an_attackers_title_is_shown_as_text(open_session, people, stack) -> None:  # type: ignore[no-untyped-def]
    token = api_token(stack, *people["user"])
    r = httpx.post(f"{stack.gateway_url}/api/v1/documents", headers={"Authorization": f"Bearer {token}"},
                   files={"file": ("<svg onload=alert(2)>.txt", "보고서 본문입니다.".encode(), "text/plain")},
                   data={"title": XSS_TITLE}, timeout=60)
    assert r.status_code == 202, r.text
    doc_id = r.json()["id"]
    s = open_session()
    page = s.login(*people["user"])
    expect(page.locator("#doc-table .doc-title a", has_text=XSS_TITLE)).to_have_text(XSS_TITLE)
    expect(page.locator("img[src=x]")).to_have_count(0)
    s.shot("14-xss-title-as-text")
    page.goto(f"/documents/{doc_id}")
    expect(page.locator("h1")).to_have_text(XSS_TITLE)
    expect(page.locator(".meta")).to_contain_text("<svg onload=alert(2)>.txt")
    expect(page.locator("img[src=x], svg, script:not([src])")).to_have_count(0)
    csp = page.request.get(f"/documents/{doc_id}").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # The session alerts list is checked when the window closes: no script ran.


def test_quota_warning_banner_and_refusal(open_session, people, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["small"])
    page.goto("/upload")
    expect(page.locator("#quota-banner")).to_be_hidden()
    big = tmp_path / "예산안.txt"
    big.write_bytes(korean_text_of(85_000))  # 85% of the 100,000-byte quota
    page.set_input_files("#files", [str(big)])
    expect(page.locator("#quota-banner")).to_be_visible(timeout=60_000)
    expect(page.locator("#quota-banner")).to_contain_text("부서 저장 용량의")
    too_big = tmp_path / "추가자료.txt"
    too_big.write_bytes(korean_text_of(20_000))  # more than what is left
    page.set_input_files("#files", [str(too_big)])
    refused = row(page, too_big.name)
    expect(refused).to_have_attribute("data-status", "refused", timeout=60_000)
    expect(refused).to_contain_text("저장 용량이 부족하여 저장하지 못했습니다")
    s.shot("15-upload-quota")
    page.goto("/upload")
    expect(page.locator("#quota-banner")).to_be_visible()  # also when the page is opened again


def test_tenant_admin_reads_quota_and_audit_log(open_session, people) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    page = s.login(*people["chief"])
    page.click("nav >> text=부서 관리")
    expect(page.locator(".quota-meter")).to_be_visible()
    expect(page.locator("#audit-table")).to_contain_text("태그 삭제")
    expect(page.locator("#audit-table")).to_contain_text("태그 추가")
    page.select_option("#a-action", "document.tag_added")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)
    expect(page.locator("#audit-table")).to_contain_text("검토필요")
    s.shot("16-admin-audit")
    # A plain user has no such page.
    s2 = open_session()
    page2 = s2.login(*people["user"])
    expect(page2.locator("nav[aria-label='주 메뉴']")).not_to_contain_text("부서 관리")
    response = page2.goto("/admin")
    assert response is not None and response.status == 403


def test_platform_admin_promotes_and_rolls_back_a_model(open_session, people, stack, test_db_name,
                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = f"web-tiny-{uuid.uuid4().hex[:6]}"

    async def register() -> None:
        db = Database(f"host={DB_HOST} port={DB_PORT} user=doctag_model dbname={test_db_name}")
        await db.open()
        try:
            registry = ModelRegistry(db, RegistrySettings().store_path)
            for v in (1, 2):
                source = make_tiny_bert(tmp_path / f"v{v}", name=name, version=f"build-{v}", seed=v)
                assert (await registry.register(name, source, created_by="test")).version == v
            await registry.set_alias(name, "production", 1, by="test")
        finally:
            await db.close()

    # Playwright's sync API keeps an event loop running in this thread: register from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, register()).result()
    s = open_session()
    page = s.login(*people["root"])
    page.click("nav >> text=플랫폼 관리")
    page.click("nav.tabs >> text=모델")
    section = page.locator("section", has=page.locator("h2", has_text=name))
    expect(section.locator("tr[data-version='1']")).to_contain_text("production")
    section.locator("tr[data-version='2'] button", has_text="운영 반영").click()
    expect(page.locator(".notice-ok")).to_have_text("별칭을 변경했습니다.")
    section = page.locator("section", has=page.locator("h2", has_text=name))
    expect(section.locator("tr[data-version='2']")).to_contain_text("production")
    s.shot("17-models-promoted")
    section.locator("tr[data-version='1'] button", has_text="되돌리기").click()
    expect(page.locator(".notice-ok")).to_have_text("별칭을 변경했습니다.")
    expect(page.locator("section", has=page.locator("h2", has_text=name)).locator("tr[data-version='1']")
           ).to_contain_text("production")
    token = api_token(stack, *people["root"])
    models = httpx.get(f"{stack.gateway_url}/api/v1/models", headers={"Authorization": f"Bearer {token}"},
                       timeout=30).json()["models"]
    assert next(m for m in models if m["name"] == name)["aliases"] == {"production": 1}
    # Shadow mode: v2 becomes the candidate, is switched on at 50%, and the section says so (nothing scored yet).
    httpx.put(f"{stack.gateway_url}/api/v1/models/{name}/aliases/candidate", json={"version": 2},
              headers={"Authorization": f"Bearer {token}"}, timeout=30).raise_for_status()
    page.reload()
    shadow = page.locator(f"#shadow-{name}")
    expect(shadow).to_have_attribute("data-shadow", "off")
    shadow.locator("input[name=enabled][value=true]").check()
    shadow.locator("input[name=share]").fill("50")
    shadow.locator("button", has_text="섀도 모드 적용").click()
    expect(page.locator(".notice-ok")).to_contain_text("섀도 모드를 켰습니다")
    shadow = page.locator(f"#shadow-{name}")
    expect(shadow).to_have_attribute("data-shadow", "on")
    expect(shadow.locator(".shadow-state")).to_have_text("켜짐")
    expect(shadow.locator("input[name=share]")).to_have_value("50")
    expect(shadow.locator(".shadow-empty")).to_contain_text("아직 비교한 표본이 없습니다")
    s.shot("17-models-shadow-on")


def training_file(per_label: int) -> bytes:
    """A small labelled JSONL file from the shared headlines: `per_label` rows of each label, then a
    row with a mobile number (masked by the gate) and the first row again (an exact duplicate)."""
    seen: dict[str, int] = {}
    lines = []
    with (DATA / "headlines_train.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if seen.get(record["label"], 0) < per_label:
                seen[record["label"]] = seen.get(record["label"], 0) + 1
                lines.append(json.dumps({"text": record["text"], "label": record["label"]}, ensure_ascii=False))
    lines.append(json.dumps({"text": "민원 담당자 연락처 010-1234-5678 로 문의 바랍니다", "label": "사회"},
                            ensure_ascii=False))
    lines.append(lines[0])
    return "\n".join(lines).encode()


def test_tenant_admin_uploads_a_dataset_approves_it_and_starts_training(  # type: ignore[no-untyped-def]
        open_session, people, tmp_path) -> None:
    """The jobs are cancelled at the end: the run itself is the e2e training test's (tests/e2e/test_training.py)."""
    s = open_session()
    page = s.login(*people["chief"])
    page.click("nav >> text=부서 관리")
    page.click("nav.tabs >> text=학습 데이터셋")
    expect(page.locator("h2#new-dataset-title")).to_have_text("새 학습 데이터셋")
    # A file the gate cannot read: the refusal is beside the file field, and the name typed is kept.
    broken = tmp_path / "깨진.jsonl"
    broken.write_text('{"text": "본문만 있고 라벨이 없음"}\n', encoding="utf-8")
    name = f"브라우저 헤드라인 {uuid.uuid4().hex[:4]}"
    page.fill("#ds-name", name)
    page.fill("#ds-task", "headlines")
    page.set_input_files("#ds-file", str(broken))
    page.click("#new-dataset button[type=submit]")
    expect(page.locator("#err-file")).to_contain_text("1번째 줄의 라벨 값이 없거나 올바르지 않습니다")
    expect(page.locator("#ds-name")).to_have_value(name)
    # The real file: the gate's report, then approval.
    good = tmp_path / "헤드라인.jsonl"
    good.write_bytes(training_file(12))
    page.set_input_files("#ds-file", str(good))
    page.click("#new-dataset button[type=submit]")
    expect(page.locator(".notice-ok")).to_contain_text("데이터셋을 등록했습니다")
    expect(page.locator("#report-rows-in")).to_have_text("86")
    expect(page.locator("#report-dropped-table tr[data-kind='exact_duplicate']")).to_contain_text("완전히 같은 중복")
    expect(page.locator("#report-pii-kinds")).to_contain_text("휴대전화 1건")
    expect(page.locator("#gate-report .badge")).to_have_text("검토 대기")
    s.shot("23-dataset-gate-report")
    page.click("#review-form button[value=approve]")
    expect(page.locator(".notice-ok")).to_contain_text("버전을 승인했습니다")
    expect(page.locator("#gate-report .badge")).to_have_text("승인됨")
    # A training job from the approved version; tiny settings (the run is not waited for here).
    page.click("nav.tabs >> text=학습 작업")
    version = page.locator("#new-job label.check", has_text=name)
    expect(version).to_have_count(1)

    def start_job() -> None:
        version.locator("input").check()
        page.locator("#new-job summary").click()
        for field, value in (("epochs", "1"), ("tune_layers", "1"), ("max_windows", "1"), ("window_tokens", "48")):
            page.fill(f"#job-{field}", value)
        page.click("#new-job button[type=submit]")

    start_job()
    expect(page.locator(".notice-ok")).to_contain_text("학습 작업을 요청했습니다")
    expect(page.locator("#job-live .job-state").first).to_have_text(re.compile("대기 중|검증 중|학습 중"))
    expect(page.locator("#job-live")).to_have_attribute("data-live", "/admin/training-jobs/live")
    s.shot("24-training-job")
    page.click("nav.tabs >> text=학습 작업")
    start_job()
    expect(page.locator(".notice-ok")).to_contain_text("학습 작업을 요청했습니다")
    # The third job in progress is over the per-user limit of two: a Korean sentence, the form kept.
    page.click("nav.tabs >> text=학습 작업")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(2)
    start_job()
    expect(page.locator("#page-error")).to_contain_text("진행 중인 학습 작업이 한도(2개)에 도달했습니다")
    expect(page.locator("#job-epochs")).to_have_value("1")
    expect(version.locator("input")).to_be_checked()
    # The list refreshes itself while a job is active (text in place: nothing moves).
    expect(page.locator("#jobs-live-time")).to_contain_text("기준", timeout=20_000)
    s.shot("25-training-limit")
    # Cancel both; a pending job ends at once, a running one at its next heartbeat.
    for _ in range(2):
        page.locator("#jobs-table button", has_text="취소").first.click()
        expect(page.locator(".notice-ok")).to_contain_text("학습 작업을 취소했습니다")
    expect(page.locator("#jobs-table button", has_text="취소")).to_have_count(0)
    # A plain user has neither screen.
    s2 = open_session()
    page2 = s2.login(*people["user"])
    for path in ("/admin/datasets", "/admin/training-jobs"):
        response = page2.goto(path)
        assert response is not None and response.status == 403, path


def test_tenant_admin_manages_users_api_keys_and_sees_usage(  # type: ignore[no-untyped-def]
        open_session, people, stack) -> None:
    tenant = people["chief"][0]
    s = open_session()
    page = s.login(*people["chief"])
    page.click("nav >> text=부서 관리")
    page.click("nav.tabs >> text=사용자")
    expect(page.locator("h1")).to_have_text("부서 관리")
    expect(page.locator("#users-table tr[data-user='kim'] .badge")).to_have_text("사용 중")
    page.fill("#u-username", "choi")
    page.fill("#u-password", "임시-비밀번호-2027")
    page.select_option("#u-role", "user")
    page.click("#new-user button[type=submit]")
    expect(page.locator(".notice-ok")).to_have_text("사용자를 만들었습니다.")
    choi = page.locator("#users-table tr[data-user='choi']")
    expect(choi.locator(".badge")).to_have_text("사용 중")
    # A name that is taken is explained, and what was typed stays.
    page.fill("#u-username", "choi")
    page.fill("#u-password", "임시-비밀번호-2027")
    page.click("#new-user button[type=submit]")
    expect(page.locator(".notice-error")).to_have_text("같은 이름의 사용자가 이미 있습니다.")
    expect(page.locator("#u-username")).to_have_value("choi")
    # Role, password reset, disable and enable, each through the gateway's admin API.
    choi.locator("select[name=role]").select_option("tenant_admin")
    choi.locator("button", has_text="변경").click()
    expect(page.locator(".notice-ok")).to_contain_text("역할을 변경했습니다")
    expect(choi.locator("select[name=role]")).to_have_value("tenant_admin")
    choi.locator("summary", has_text="비밀번호 재설정").click()
    choi.locator("input[name=password]").fill("새-비밀번호-2028!")
    choi.locator("button", has_text="재설정").click()
    expect(page.locator(".notice-ok")).to_contain_text("비밀번호를 재설정했습니다")
    assert httpx.post(f"{stack.gateway_url}/api/v1/auth/token", timeout=30, json={
        "tenant": tenant, "username": "choi", "password": "새-비밀번호-2028!"}).status_code == 200
    choi.locator("button", has_text="사용 중지").click()  # confirmed in the dialog
    expect(page.locator(".notice-ok")).to_contain_text("사용 중지했습니다")
    expect(choi.locator(".badge")).to_have_text("사용 중지")
    s.shot("18-admin-users")
    assert httpx.post(f"{stack.gateway_url}/api/v1/auth/token", timeout=30, json={
        "tenant": tenant, "username": "choi", "password": "새-비밀번호-2028!"}).status_code == 401
    choi.locator("button", has_text="다시 사용").click()
    expect(page.locator(".notice-ok")).to_contain_text("다시 사용하도록")
    expect(choi.locator(".badge")).to_have_text("사용 중")
    # The administrator cannot lock themself out: no disable button on their own row.
    expect(page.locator("#users-table tr[data-user='chief'] button", has_text="사용 중지")).to_have_count(0)

    # API keys: the key is shown once, works as a credential, and stops working when revoked.
    page.click("nav.tabs >> text=API 키")
    page.fill("#k-name", "야간 일괄 등록")
    page.click("#new-key-form button[type=submit]")
    key = page.locator("#new-key").input_value()
    assert key.startswith("dtk_")
    s.shot("19-admin-api-key-created")
    api = httpx.Client(base_url=stack.gateway_url, timeout=30)
    assert api.get("/api/v1/documents", headers={"apikey": key}).status_code == 200
    page.goto("/admin/api-keys")
    assert key not in page.content()
    entry = page.locator("#keys-table tr", has_text="야간 일괄 등록")
    entry.locator("button", has_text="폐기").click()
    expect(page.locator(".notice-ok")).to_have_text("API 키를 폐기했습니다.")
    expect(page.locator("#keys-table tr", has_text="야간 일괄 등록")).to_contain_text("폐기됨")
    # The gateway's revocation cache (DOCTAG_GATEWAY_REVOCATION_CACHE_SECONDS, 5 s) may let it through a moment.
    deadline = time.monotonic() + 30
    while api.get("/api/v1/documents", headers={"apikey": key}).status_code != 401:
        assert time.monotonic() < deadline, "a revoked API key still works"
        time.sleep(1)
    api.close()

    # API usage over 30 days: a chart drawn on the server, and the same numbers as a table.
    page.click("nav.tabs >> text=API 사용량")
    expect(page.locator("#usage-chart rect.chart-bar")).to_have_count(30)
    assert int(page.locator("#usage-today").inner_text().replace(",", "")) > 0
    assert int(page.locator("#usage-chart rect.chart-bar-today").get_attribute("data-calls") or 0) > 0
    page.click("summary:has-text('표로 보기')")
    expect(page.locator("#usage-table tbody tr")).to_have_count(30)
    s.shot("20-admin-usage")
    # A plain user has none of these screens.
    s2 = open_session()
    page2 = s2.login(*people["user"])
    for path in ("/admin/users", "/admin/api-keys", "/admin/usage", "/admin/queue", "/admin/tenants"):
        response = page2.goto(path)
        assert response is not None and response.status == 403, path


def wait_for_status(stack: StackLayout, token: str, doc_id: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + TAGGING_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        doc = httpx.get(f"{stack.gateway_url}/api/v1/documents/{doc_id}", timeout=30,
                        headers={"Authorization": f"Bearer {token}"}).json()
        if doc["status"] == wanted:
            return dict(doc)
        time.sleep(1)
    raise AssertionError(f"document {doc_id} never became {wanted}")


def test_platform_admin_sets_quotas_and_retries_from_the_queue(  # type: ignore[no-untyped-def]
        open_session, people, stack) -> None:
    tenant = people["user"][0]
    token = api_token(stack, *people["user"])
    with ENCRYPTED.open("rb") as fh:
        uploaded = httpx.post(f"{stack.gateway_url}/api/v1/documents", params={"duplicate": "allow"}, timeout=60,
                              headers={"Authorization": f"Bearer {token}"},
                              files={"file": ("암호문서.hwp", fh, "application/octet-stream")},
                              data={"title": "암호 걸린 예산 문서"})
    assert uploaded.status_code == 202, uploaded.text
    doc_id = uploaded.json()["id"]
    wait_for_status(stack, token, doc_id, "failed")

    s = open_session()
    page = s.login(*people["root"])
    page.click("nav >> text=플랫폼 관리")
    expect(page.locator("h1")).to_have_text("플랫폼 관리")
    mine = page.locator(f"#tenants-table tr[data-tenant='{tenant}']")
    mine.locator("input[name=api_daily_quota]").fill("50000")
    mine.locator("form[action$='/quota'] button", has_text="저장").click()
    expect(page.locator(".notice-ok")).to_have_text("API 호출 한도를 변경했습니다.")
    expect(mine.locator("input[name=api_daily_quota]")).to_have_value("50000")
    # The storage quota next to it, in MB: 50 MB (the fixture's) raised to 60 MB, shown as used / quota.
    expect(mine.locator("[data-storage-quota]")).to_contain_text("/ 50.0 MB")
    mine.locator("input[name=storage_quota_mb]").fill("60")
    mine.locator("form[action$='/storage-quota'] button", has_text="저장").click()
    expect(page.locator(".notice-ok")).to_have_text("저장 용량 한도를 변경했습니다.")
    expect(mine.locator("input[name=storage_quota_mb]")).to_have_value("60")
    expect(mine.locator("[data-storage-quota]")).to_contain_text("/ 60.0 MB")
    quota = httpx.get(f"{stack.gateway_url}/api/v1/quota", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert quota.json()["quota_bytes"] == 60 * 1024 * 1024
    s.shot("21-platform-tenants")
    mine.locator("a", has_text="30일 사용량").click()
    expect(page.locator("#usage-title")).to_contain_text("기획재정담당관")
    expect(page.locator(".usage-summary")).to_contain_text("50,000")

    # The queue of every department, then of one: the failed document, retried.
    page.click("nav >> text=플랫폼 관리")
    page.click("nav.tabs >> text=태깅 대기열")
    expect(page.locator("#queue-stats")).to_be_visible()
    expect(page.locator("#broker-depth")).to_contain_text("워커")
    page.select_option("#q-tenant", label=f"기획재정담당관 ({tenant})")
    page.click("form.filters button[type=submit]")
    failed = page.locator(f"#failed-table tr[data-id='{doc_id}']")
    expect(failed).to_contain_text("암호가 걸린 파일이라 읽을 수 없습니다")
    s.shot("22-platform-queue")
    failed.locator("button", has_text="다시 시도").click()
    expect(page.locator(".notice-ok")).to_have_text("다시 태깅하도록 대기열에 넣었습니다.")
    expect(page.locator("#q-tenant")).to_have_value(re.compile(r"^[0-9a-f-]{36}$"))  # still that department
    # The numbers refresh by themselves (polled every 5 s at first), text only: nothing moves.
    before = page.locator("#queue-stats").bounding_box()
    expect(page.locator("#queue-live-time")).to_contain_text("기준", timeout=20_000)
    assert page.locator("#queue-stats").bounding_box() == before
    # A hidden tab polls no more; shown again, it polls at once.
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/admin/queue/live" in r.url else None)
    page.evaluate("""() => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
                             document.dispatchEvent(new Event('visibilitychange')); }""")
    page.wait_for_timeout(8_000)
    assert polls == []
    page.evaluate("""() => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
                             document.dispatchEvent(new Event('visibilitychange')); }""")
    page.wait_for_timeout(2_000)
    assert len(polls) == 1
    # The real worker takes the job again (and, the file being encrypted, fails it again).
    wait_for_status(stack, token, doc_id, "failed")

    # The department's administrator sees its own queue, and the retry in its audit log.
    s2 = open_session()
    page2 = s2.login(*people["chief"])
    page2.goto("/admin/queue")
    expect(page2.locator(f"#failed-table tr[data-id='{doc_id}']")).to_be_visible()
    expect(page2.locator("#broker-depth")).to_have_count(0)  # the broker's totals are the platform's
    s2.shot("23-admin-queue")
    page2.goto("/admin?action=document.retried")
    expect(page2.locator("#audit-table")).to_contain_text("태깅 재시도")
    expect(page2.locator("#audit-table")).to_contain_text("root")


def test_pages_are_public_and_the_api_is_not(stack) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.gateway_url, timeout=30, follow_redirects=False) as client:
        assert client.get("/").headers["location"] == "/login"
        login = client.get("/login")
        assert login.status_code == 200 and "script-src 'self'" in login.headers["content-security-policy"]
        assert login.headers["x-frame-options"] == "DENY" and login.headers["cache-control"] == "no-store"
        css = client.get("/static/app.css")
        assert css.status_code == 200 and "immutable" in css.headers["cache-control"]
        # Pages that need a session send the browser to the login page, coming back afterwards.
        location = urlsplit(client.get("/search?q=예산").headers["location"])
        assert location.path == "/login" and parse_qs(location.query)["next"] == ["/search?q=%EC%98%88%EC%82%B0"]
        # Every API path needs a token, known or not: nothing under /api falls through to the UI.
        for path in ("/api/v1/documents", "/api/v1/nowhere", "/api"):
            assert client.get(path).status_code == 401, path
    # The session cookie is no API credential.
    with httpx.Client(base_url=stack.gateway_url, timeout=30, cookies={"doctag_session": "x"}) as client:
        assert client.get("/api/v1/documents").status_code == 401
