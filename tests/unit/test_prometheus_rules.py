"""Prometheus for the seven hosts: file_sd targets from the layout, a configuration and rules that
promtool accepts, alert unit tests (promtool test rules), and only metrics the platform exports."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import vm_layout
from services.cli.prometheus_targets import file_sd_targets, write_file_sd
from services.common import pki
from tests.promql import PROMETHEUS_DIR, PROMETHEUS_SERIES, exported_metric_names, metric_names, promtool

RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
# The contract's inventory (infra/inventory.example.yaml): seven hosts.
HOSTS = [("db-1", "db", "10.20.0.10"), ("model-1", "model", "10.20.0.20"), ("web-1", "web", "10.20.0.30"),
         ("web-2", "web", "10.20.0.31"), ("tagging-1", "tagging", "10.20.0.40"),
         ("tagging-2", "tagging", "10.20.0.41"), ("gw-1", "gateway", "10.20.0.50")]


def _rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"]]


def test_file_sd_has_every_service_of_every_host_at_its_metrics_port() -> None:
    entries = file_sd_targets(HOSTS)
    by_target = {e["targets"][0]: e["labels"] for e in entries}
    assert len(entries) == sum(len(vm_layout.role(r).services) for _, r, _ in HOSTS) == 11
    assert by_target["10.20.0.50:8100"] == {"job": "gateway", "role": "gateway", "host": "gw-1"}  # status port
    assert by_target["10.20.0.31:8101"] == {"job": "upload", "role": "web", "host": "web-2"}
    assert by_target["10.20.0.41:8131"] == {"job": "tagging-worker", "role": "tagging", "host": "tagging-2"}
    assert by_target["10.20.0.20:8121"]["job"] == "model-serving"
    assert by_target["10.20.0.20:8151"] == {"job": "training-worker", "role": "model", "host": "model-1"}
    assert not [e for e in entries if e["labels"]["host"] == "db-1"]  # the db host runs no platform service
    assert file_sd_targets([("gw-6", "gateway", "fd00::50")])[0]["targets"] == ["[fd00::50]:8100"]


@pytest.mark.parametrize(("hosts", "message"), [
    ([("mail-1", "mail", "10.0.0.1")], "mail-1.*unknown VM role 'mail'"),
    ([("web-1", "web", "10.0.0.1"), ("web-1", "web", "10.0.0.2")], "'web-1' is listed twice"),
    ([("web-1", "web", "")], "'web-1' has no address"),
])
def test_file_sd_refuses_a_bad_inventory(hosts: list[tuple[str, str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        file_sd_targets(hosts)


def test_write_file_sd_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "file_sd" / "doctag.json"
    write_file_sd(path, HOSTS)
    write_file_sd(path, HOSTS[:3])
    assert json.loads(path.read_text(encoding="utf-8")) == file_sd_targets(HOSTS[:3])
    assert [p.name for p in path.parent.iterdir()] == ["doctag.json"]  # no temporary file left


def test_promtool_accepts_the_configuration_with_real_targets_and_certificates(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    pki.init_ca(etc / "doctag-pki")
    pki.issue(etc / "doctag-pki", "prometheus", hosts=["prometheus-1"])
    write_file_sd(etc / "file_sd" / "doctag.json", HOSTS)
    (etc / "rules").mkdir()
    for rules in RULE_FILES:
        (etc / "rules" / rules.name).write_bytes(rules.read_bytes())
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8").replace("/etc/prometheus", str(etc))
    (etc / "prometheus.yml").write_text(config, encoding="utf-8")
    result = subprocess.run([promtool(), "check", "config", str(etc / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    # One scrape job, every target (the gateway's status listener too) over mutual TLS.
    jobs = {j["job_name"]: j for j in yaml.safe_load(config)["scrape_configs"]}
    assert set(jobs) == {"doctag-services"}
    assert jobs["doctag-services"]["scheme"] == "https"
    assert jobs["doctag-services"]["tls_config"]["cert_file"].endswith("prometheus.crt")


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", *map(str, RULE_FILES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum by (queue (up)\n",
                   encoding="utf-8")
    result = subprocess.run([promtool(), "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_alert_unit_tests_pass() -> None:
    """Backlog growing (and not while draining), dead letters, a target down, storage and API quotas,
    certificate expiry, inference p95: infra/prometheus/tests/doctag-alerts.test.yml."""
    result = subprocess.run([promtool(), "test", "rules", str(PROMETHEUS_DIR / "tests" / "doctag-alerts.test.yml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_the_issue_asks_for_exist() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts >= {"DoctagTaggingBacklogGrowing", "DoctagDeadLetters", "DoctagTargetDown",
                      "DoctagTenantStorageQuotaWarning", "DoctagTenantStorageQuotaFull", "DoctagTenantApiQuotaWarning",
                      "DoctagTenantApiQuotaExhausted", "DoctagInferenceSlow", "DoctagCertificateExpiresSoon"}


def test_every_metric_a_rule_reads_is_exported_by_the_platform() -> None:
    exported = exported_metric_names()
    recorded = {r["record"] for r in _rules() if "record" in r}
    for rule in _rules():
        for name in metric_names(rule["expr"]):
            if ":" in name:
                assert name in recorded, (rule.get("alert") or rule.get("record"), name)
            else:
                assert name in exported | PROMETHEUS_SERIES, (rule.get("alert") or rule.get("record"), name)


def test_metric_name_check_would_catch_a_typo() -> None:
    exported = exported_metric_names()
    assert "doctag_amqp_queue_messages" in exported and "doctag_tenant_storage_used_bytes" in exported
    assert metric_names('max by (queue) (doctag_amqp_queue_mesages{queue="x"})') - exported == {
        "doctag_amqp_queue_mesages"}
