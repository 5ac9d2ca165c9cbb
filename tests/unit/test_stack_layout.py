"""The local stack's generated configs: the seven-VM layout, valid kong.yml, supervisor programs."""
from __future__ import annotations

import configparser
import stat
from pathlib import Path

from gateway.config import load_config
from services.cli.stack import ServiceAccounts, StackLayout
from services.common.settings import CommonSettings


def test_layout_has_the_seven_vm_replica_counts(tmp_path: Path) -> None:
    names = [p.name for p in StackLayout(state_dir=tmp_path).programs()]
    assert sorted(names) == sorted(["gateway", "web-1", "web-2", "upload-1", "upload-2", "search-1", "search-2",
                                    "model-serving", "training-worker", "tagging-worker-1", "tagging-worker-2"])


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
    training = parser["program:training-worker"]
    assert training["command"].endswith("-m services.training_worker")
    assert f'DOCTAG_HTTP_PORT="{layout.training_port}"' in training["environment"]
    assert 'DOCTAG_TRAINING_NICE="10"' in training["environment"]
    assert len([s for s in parser.sections() if s.startswith("program:")]) == 11


def test_each_program_gets_only_its_own_credentials(tmp_path: Path) -> None:
    """With `make up`'s accounts, each service is pointed at its own password files (never the
    passwords themselves), the worker at none for the database; the config is the owner's only."""
    db = {role: tmp_path / "secrets" / "db" / role
          for role in ("doctag_gateway", "doctag_upload", "doctag_relay", "doctag_search", "doctag_model")}
    amqp = {"upload": tmp_path / "secrets" / "amqp" / "u", "tagging-worker": tmp_path / "secrets" / "amqp" / "w"}
    urls = {"upload": "amqp://doctag-upload@127.0.0.1:5672/doctag",
            "tagging-worker": "amqp://doctag-tagging-worker@127.0.0.1:5672/doctag"}
    layout = StackLayout.with_free_ports(tmp_path)
    layout.accounts = ServiceAccounts(db, urls, amqp)
    path = layout.write_supervisor_config()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parser = configparser.RawConfigParser()
    parser.read(path)

    def env(program: str) -> str:
        return parser[f"program:{program}"]["environment"]

    assert f'DOCTAG_DB_PASSWORD_FILE="{db["doctag_upload"].resolve()}"' in env("upload-2")
    assert f'DOCTAG_RELAY_DB_PASSWORD_FILE="{db["doctag_relay"].resolve()}"' in env("upload-1")
    assert f'DOCTAG_AMQP_URL="{urls["upload"]}"' in env("upload-1")
    assert 'DOCTAG_AMQP_DECLARE_TOPOLOGY="false"' in env("upload-1")
    assert f'DOCTAG_DB_PASSWORD_FILE="{db["doctag_search"].resolve()}"' in env("search-1")
    assert f'DOCTAG_DB_PASSWORD_FILE="{db["doctag_model"].resolve()}"' in env("model-serving")
    assert f'DOCTAG_DB_PASSWORD_FILE="{db["doctag_gateway"].resolve()}"' in env("gateway")
    worker = env("tagging-worker-1")
    assert "DOCTAG_DB_PASSWORD_FILE" not in worker and f'DOCTAG_AMQP_URL="{urls["tagging-worker"]}"' in worker
    assert "DOCTAG_AMQP_URL" not in env("search-1") and "DOCTAG_AMQP_URL" not in env("gateway")
    assert f'DOCTAG_TLS_DIR="{layout.pki_dir.resolve()}"' in worker


def test_amqp_password_file_replaces_the_urls_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr/et:@\n")
    settings = CommonSettings(amqp_url="amqp://doctag-upload@mq.internal:5671/doctag", amqp_password_file=secret)
    assert settings.amqp_connection_url == "amqp://doctag-upload:s3cr%2Fet%3A%40@mq.internal:5671/doctag"
    assert CommonSettings(amqp_url="amqp://guest:guest@127.0.0.1:5672/").amqp_connection_url.endswith("guest@127.0.0.1:5672/")
    (tmp_path / "db").write_text("db-pass\n")
    assert "password='db-pass'" in CommonSettings(db_password_file=tmp_path / "db").dsn()
