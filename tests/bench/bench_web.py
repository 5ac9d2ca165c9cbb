"""Web UI benchmark: page weight (bytes transferred, cold cache) of the upload and search screens, and
time to interactive of the search screen, in headless Chromium (Debian's, driven by Playwright).

`make bench-web`; never part of `make test`. It starts its own stack (free ports, a temporary
database, AMQP prefix and state directory, all removed afterwards), uploads a few real Korean
documents so that the search screen shows results, then measures each screen in a fresh browser
context (an empty cache) with the session cookie set:

- page weight: the sum of `encodedDataLength` of every response (headers included) until the
  network is idle, fonts included (the browser loads only the unicode-range pieces it needs);
- time to interactive (search screen, cold and warm cache): navigation start to the later of
  DOMContentLoaded (the deferred script has run and bound its handlers) and the end of the last
  long task (> 50 ms), as Lighthouse approximates it; first contentful paint for reference.

Targets: under 300 KB for each screen, under 1 s to interactive. JSON in var/bench/web.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from playwright.sync_api import Browser, sync_playwright

from services.cli import admin
from services.cli.stack import StackLayout
from tests.bench.bench_ingest import AMQP_URL, DB_HOST, DB_PORT, REPO, SHARED, create_database, drop_database, log
from tests.bench.stats import Check, fmt, format_checks, format_table
from tests.support import delete_topology

PASSWORD = "bench-password-1234"
SAMPLES = [SHARED / "samples" / p for p in (
    "pdf/odl__2125318_의사국 의안과_의안원문_hwp.pdf", "pdf/odl__제안요청서(수정)_230524 (1).pdf",
    "docx/langchain-kr__sample-word-document.docx", "hwp/pyhwp__sample-5017.hwp",
    "hwp/langchain-kr__디지털 정부혁신 추진계획.hwp", "hwpx/hwpxlib__20240919__테스트문서.hwpx")]
SEARCH_QUERY = "정부 혁신 추진"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--lang=ko-KR"]

# Long tasks and paint timings, recorded from the very start of the page.
OBSERVE = """
window.__longtasks = [];
new PerformanceObserver(list => {
  for (const e of list.getEntries()) window.__longtasks.push(e.startTime + e.duration);
}).observe({type: 'longtask', buffered: true});
"""
TIMINGS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const lastLong = Math.max(0, ...window.__longtasks);
  return {dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd,
          fcp_ms: fcp ? fcp.startTime : null, last_long_task_ms: lastLong,
          tti_ms: Math.max(nav.domContentLoadedEventEnd, lastLong)};
}"""


def seed(gateway: str, tenant: str, timeout: float = 300.0) -> list[str]:
    """Uploads the sample documents and waits until every one is tagged (or failed)."""
    with httpx.Client(base_url=gateway, timeout=120) as client:
        token = client.post("/api/v1/auth/token", json={"tenant": tenant, "username": "bench",
                                                        "password": PASSWORD}).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        ids = [client.post("/api/v1/documents", headers=headers,
                           files={"file": (p.name, p.read_bytes())}).json()["id"] for p in SAMPLES]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [client.get(f"/api/v1/documents/{i}", headers=headers).json()["status"] for i in ids]
            if all(s in ("tagged", "failed") for s in statuses):
                return ids
            time.sleep(1)
    raise RuntimeError("the sample documents were not tagged in time")


def session_cookie(browser: Browser, gateway: str, tenant: str) -> list[Any]:
    context = browser.new_context(base_url=gateway)
    page = context.new_page()
    page.goto("/login")
    page.fill("#tenant", tenant)
    page.fill("#username", "bench")
    page.fill("#password", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url("**/documents")
    cookies = context.cookies()
    context.close()
    return list(cookies)


def measure(browser: Browser, gateway: str, cookies: list[Any], path: str, *, warm: bool = False) -> dict[str, Any]:
    """One page load in a fresh context (cold cache), or its second load (`warm`)."""
    context = browser.new_context(base_url=gateway, viewport={"width": 1280, "height": 900}, locale="ko-KR")
    context.add_cookies(cookies)
    context.add_init_script(OBSERVE)
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    transferred: dict[str, int] = {"bytes": 0, "requests": 0}
    by_type: dict[str, int] = {}
    types: dict[str, str] = {}
    cdp.on("Network.responseReceived", lambda e: types.__setitem__(e["requestId"], e["type"]))

    def finished(event: dict[str, Any]) -> None:
        transferred["bytes"] += int(event["encodedDataLength"])
        transferred["requests"] += 1
        kind = types.get(event["requestId"], "Other")
        by_type[kind] = by_type.get(kind, 0) + int(event["encodedDataLength"])

    if warm:
        page.goto(path, wait_until="networkidle")
    cdp.on("Network.loadingFinished", finished)
    transferred.update(bytes=0, requests=0)
    by_type.clear()
    page.goto(path, wait_until="networkidle")
    timings = page.evaluate(TIMINGS)
    context.close()
    return {"path": path, "warm": warm, **transferred, "by_type": by_type, **timings}


def bench(layout: StackLayout, admin_dsn: str, runs: int) -> dict[str, Any]:
    tenant = f"bench-web-{uuid.uuid4().hex[:6]}"
    admin.create_tenant(admin_dsn, tenant, "벤치마크과", 1024 * 1024 * 1024)
    admin.create_user(admin_dsn, tenant, "bench", PASSWORD, "user")
    log("uploading the sample documents ...")
    seed(layout.gateway_url, tenant)
    search_path = "/search?q=" + quote(SEARCH_QUERY)
    results: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            cookies = session_cookie(browser, layout.gateway_url, tenant)
            measure(browser, layout.gateway_url, cookies, "/upload")  # the stack's first page render warms it
            for name, path in (("upload", "/upload"), ("search", search_path)):
                log(f"measuring {path} ...")
                results[f"{name}_cold"] = [measure(browser, layout.gateway_url, cookies, path) for _ in range(runs)]
            results["search_warm"] = [measure(browser, layout.gateway_url, cookies, search_path, warm=True)
                                      for _ in range(runs)]
        finally:
            browser.close()
    return results


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(statistics.median(values)) if values else float("nan")


def report(results: dict[str, Any]) -> tuple[str, list[Check]]:
    rows = []
    for key in ("upload_cold", "search_cold", "search_warm"):
        runs = results[key]
        types = runs[0]["by_type"]
        rows.append([key.replace("_", " ("), f"{median(runs, 'bytes') / 1024:.1f} KB", str(runs[0]["requests"]),
                     f"{fmt(median(runs, 'tti_ms'))} ms", f"{fmt(median(runs, 'fcp_ms'))} ms",
                     ", ".join(f"{k} {v / 1024:.1f} KB" for k, v in sorted(types.items()))])
    table = format_table(["screen (cache)", "transferred", "requests", "TTI", "FCP", "by type (first run)"],
                         [[r[0] + ")", *r[1:]] for r in rows])
    checks = [
        Check("upload screen, cold cache (KB)", median(results["upload_cold"], "bytes") / 1024, "<", 300),
        Check("search screen, cold cache (KB)", median(results["search_cold"], "bytes") / 1024, "<", 300),
        Check("search screen, time to interactive, cold cache (ms)", median(results["search_cold"], "tti_ms"),
              "<", 1000),
    ]
    return table, checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="page loads per screen (the median is reported)")
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench" / "web.json")
    args = parser.parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    db_name = f"doctag_bench_{run_id}"
    state = Path(tempfile.mkdtemp(prefix="doctag-bench-", dir="/tmp"))
    admin_dsn = create_database(db_name)
    layout = StackLayout.with_free_ports(state, env={
        "DOCTAG_DB_HOST": DB_HOST, "DOCTAG_DB_PORT": str(DB_PORT), "DOCTAG_DB_NAME": db_name,
        "DOCTAG_AMQP_URL": AMQP_URL, "DOCTAG_AMQP_PREFIX": f"doctag-bench-{run_id}",
        "DOCTAG_MODEL_STORE": str(state / "models")})
    started = time.time()
    try:
        log("starting the stack ...")
        layout.start()
        layout.wait_ready(timeout=600)
        results = bench(layout, admin_dsn, args.runs)
    finally:
        layout.stop()
        delete_topology(AMQP_URL, f"doctag-bench-{run_id}")
        drop_database(db_name)
        shutil.rmtree(state, ignore_errors=True)
    table, checks = report(results)
    print(table)
    print()
    print(format_checks(checks))
    passed = all(c.passed for c in checks)
    print(f"\noverall: {'PASS' if passed else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": {"runs": args.runs, "cpu_count": os.cpu_count(), "started_at": started,
                                              "wall_seconds": time.time() - started},
                                     "results": results, "checks": [c.as_dict() for c in checks], "passed": passed},
                                    ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
