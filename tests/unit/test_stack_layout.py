"""The local stack's generated configs: the seven-VM layout, valid kong.yml, supervisor programs."""
from __future__ import annotations

import configparser
from pathlib import Path

from gateway.config import load_config
from services.cli.stack import StackLayout


def test_layout_has_the_seven_vm_replica_counts(tmp_path: Path) -> None:
    names = [p.name for p in StackLayout(state_dir=tmp_path).programs()]
    assert sorted(names) == sorted(["gateway", "web-1", "web-2", "upload-1", "upload-2", "search-1", "search-2",
                                    "model-serving", "tagging-worker-1", "tagging-worker-2"])


def test_generated_gateway_config_points_at_the_layout(tmp_path: Path) -> None:
    layout = StackLayout.with_free_ports(tmp_path)
    config = load_config(layout.write_gateway_config())
    targets = {u.name: [t.target for t in u.targets] for u in config.upstreams}
    assert targets["upload-upstream"] == [f"127.0.0.1:{h}" for h, _ in layout.upload_ports]
    assert targets["search-upstream"] == [f"127.0.0.1:{h}" for h, _ in layout.search_ports]
    assert targets["model-serving-upstream"] == [f"127.0.0.1:{layout.model_ports[0]}"]
    assert targets["web-upstream"] == [f"127.0.0.1:{p}" for p in layout.web_ports]


def test_supervisor_config_runs_every_program_with_its_ports(tmp_path: Path) -> None:
    layout = StackLayout.with_free_ports(tmp_path, env={"DOCTAG_DB_NAME": "x%y"})
    parser = configparser.RawConfigParser()
    parser.read(layout.write_supervisor_config())
    worker = parser["program:tagging-worker-2"]
    assert worker["command"].endswith("-m services.tagging_worker")
    env = worker["environment"]
    assert f'DOCTAG_HTTP_PORT="{layout.worker_ports[1]}"' in env
    assert "DOCTAG_DOCUMENTS_GRPC_TARGET=" in env and 'DOCTAG_DB_NAME="x%%y"' in env
    assert parser["program:upload-1"]["autorestart"] == "true"
    web = parser["program:web-2"]
    assert web["command"].endswith("-m services.web")
    assert f'DOCTAG_HTTP_PORT="{layout.web_ports[1]}"' in web["environment"]
    assert f'DOCTAG_WEB_API_URL="{layout.gateway_url}"' in web["environment"]
    assert len([s for s in parser.sections() if s.startswith("program:")]) == 10
