"""infra/grafana/doctag.json: a well-formed dashboard on a Prometheus datasource variable, panels
on a 24-column grid without overlaps, the views the operators asked for, and every PromQL
expression parsed by promtool and reading only metrics the platform exports."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.promql import PROMETHEUS_DIR, PROMETHEUS_SERIES, REPO, exported_metric_names, metric_names, promtool

DASHBOARD = REPO / "infra" / "grafana" / "doctag.json"
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "table", "gauge"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _targets(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    assert dash["uid"] == "doctag-overview" and dash["title"] and isinstance(dash["schemaVersion"], int)
    (variable,) = dash["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]


def test_dashboard_shows_what_operators_watch() -> None:
    exprs = " ".join(t["expr"] for t in _targets(_dashboard()))
    for needle in ("doctag_gateway_requests_total", "doctag_gateway_request_duration_seconds_bucket",  # per route
                   "doctag_amqp_queue_messages", "doctag_tagging_jobs_total",                          # queue, rate
                   "doctag_inference_duration_seconds_bucket", "doctag_inference_batch_windows",       # inference
                   "doctag:tenant_storage_used:ratio", "doctag:tenant_api_quota_used:ratio",           # quotas
                   'status=~"5.."'):                                                                  # errors
        assert needle in exprs, needle


def test_every_expression_parses_and_reads_exported_metrics(tmp_path: Path) -> None:
    exported = exported_metric_names()
    recorded = {r["record"] for f in (PROMETHEUS_DIR / "rules").glob("*.yml")
                for g in yaml.safe_load(f.read_text(encoding="utf-8"))["groups"] for r in g["rules"] if "record" in r}
    rules = []
    for i, target in enumerate(_targets(_dashboard())):
        expr = target["expr"].replace("$__rate_interval", "5m")
        for name in metric_names(expr):
            assert name in (recorded if ":" in name else exported | PROMETHEUS_SERIES), (target["expr"], name)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    # promtool parses PromQL only inside rule files: every panel expression as a recording rule.
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
