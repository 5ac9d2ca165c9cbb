"""Helpers for the Prometheus and Grafana tests: the metric names the platform exports (read from
prometheus_client's registry after importing every service's metrics), the names a PromQL
expression reads, and promtool."""
from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

# The modules that register the services' metrics: each service's application module (which
# imports the rest of its metrics) and the metric modules loaded only inside the services.
SERVICE_MODULES = (
    "gateway.app", "services.upload.app", "services.upload.relay", "services.upload.purge",
    "services.search.api", "services.tagging_worker.app", "services.model_serving.metrics",
    "services.model_serving.inference_log", "services.common.access", "services.common.tls",
)
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_FUNCTIONS_AND_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                           "offset", "bool", "inf", "nan"}


def exported_metric_names() -> set[str]:
    """Every sample name the services can expose (counters' `_total`, histograms' `_bucket`...)."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        kind = metric.type
        if kind == "counter":
            names |= {f"{metric.name}_total", f"{metric.name}_created"}
        elif kind in ("histogram", "summary"):
            names |= {f"{metric.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        elif kind == "gauge":
            names.add(metric.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (recording rules' `a:b:c` names included)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)                      # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                     # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = match.group(0)
        rest = text[match.end():].lstrip()
        if name.lower() in _FUNCTIONS_AND_KEYWORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make promtool` installs Debian's prometheus package (as root)")
    return path


REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "infra" / "prometheus"
