"""systemd units and supervisor programs generated from vm_layout: committed, hardened, verified."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from services.cli import units, vm_layout

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def test_committed_units_are_the_generator_output() -> None:
    committed = {p.name: p.read_text(encoding="utf-8") for p in units.COMMITTED_UNITS.glob("*.service")}
    assert committed == units.render_all_units(), (
        "infra/systemd/ is stale: run `python -c 'from services.cli import units; units.write_committed()'`")


def test_one_hardened_unit_per_service_with_its_memory_limit() -> None:
    for r in vm_layout.ROLES:
        for s in r.services:
            text = units.render_unit(s, units.HostPaths())
            for line in ("User=doctag", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                         "NoNewPrivileges=yes", "Restart=on-failure", f"MemoryMax={s.memory_max_mib}M",
                         f"EnvironmentFile=/etc/doctag/{s.name}.env",
                         f"ExecStart=/opt/doctag/current/venv/bin/python -m {s.module}"):
                assert line in text.splitlines(), (s.name, line)
    rw = {s.name: [ln for ln in units.render_unit(s, units.HostPaths()).splitlines()
                   if ln.startswith("ReadWritePaths=")] for r in vm_layout.ROLES for s in r.services}
    # only the blob writer, the model store (model-serving, and the training worker that hands artifacts
    # to it) and search's saved vector indexes get write access to anything but their private /tmp
    assert rw == {"model-serving": ["ReadWritePaths=/var/lib/doctag"], "upload": ["ReadWritePaths=/srv/doctag-blobs"],
                  "training-worker": ["ReadWritePaths=/var/lib/doctag"],
                  "search": ["ReadWritePaths=/var/lib/doctag"], "web": [], "tagging-worker": [], "gateway": []}
    # inference first: the training worker has a smaller CPU share and a higher nice value
    training = units.render_unit(vm_layout.TRAINING_WORKER, units.HostPaths()).splitlines()
    assert "CPUWeight=20" in training and "Nice=10" in training
    assert not [ln for ln in units.render_unit(vm_layout.MODEL_SERVING, units.HostPaths()).splitlines()
                if ln.startswith(("CPUWeight=", "Nice="))]


def test_units_follow_a_hosts_paths() -> None:
    paths = units.HostPaths(install_root=Path("/srv/dt"), config_dir=Path("/etc/dt"), blob_dir=Path("/mnt/ceph"),
                            service_user=None)
    text = units.render_unit(vm_layout.UPLOAD, paths)
    assert "ExecStart=/srv/dt/current/venv/bin/python -m services.upload" in text
    assert "EnvironmentFile=/etc/dt/upload.env" in text and "ReadWritePaths=/mnt/ceph" in text
    assert "User=" not in text


def _verify(root: Path, unit_files: list[Path]) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", *map(str, unit_files)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root where the units' ExecStart exists and systemd's own targets are found: verify then
    checks every key and value of the unit (it resolves ExecStart and dependencies under --root)."""
    root = tmp_path / "root"
    python = root / "opt/doctag/current/venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


@pytest.mark.skipif(SYSTEMD_ANALYZE is None or not Path("/usr/lib/systemd/system").is_dir(),
                    reason="needs systemd-analyze (Debian's systemd package)")
def test_systemd_analyze_verify_accepts_the_committed_units(fake_root: Path) -> None:
    copies = [Path(shutil.copy(p, fake_root / "etc/systemd/system")) for p in units.COMMITTED_UNITS.glob("*.service")]
    assert len(copies) == sum(len(r.services) for r in vm_layout.ROLES)
    result = _verify(fake_root, copies)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None or not Path("/usr/lib/systemd/system").is_dir(),
                    reason="needs systemd-analyze (Debian's systemd package)")
def test_systemd_analyze_verify_reports_a_broken_unit(fake_root: Path) -> None:
    """The check is real: a misspelt key, a bad value and a missing binary are all reported."""
    text = units.render_unit(vm_layout.UPLOAD, units.HostPaths())
    broken = fake_root / "etc/systemd/system/doctag-broken.service"
    broken.write_text(text.replace("ProtectSystem=", "ProtectSytem=").replace("MemoryMax=2560M", "MemoryMax=lots"))
    result = _verify(fake_root, [broken])
    assert "Unknown key 'ProtectSytem'" in result.stderr and "Invalid memory limit 'lots'" in result.stderr
    (fake_root / "opt/doctag/current/venv/bin/python").unlink()
    result = _verify(fake_root, [Path(shutil.copy(units.COMMITTED_UNITS / "doctag-upload.service",
                                                  fake_root / "etc/systemd/system"))])
    assert result.returncode != 0 and "is not executable" in result.stderr


def test_env_files_round_trip_and_refuse_what_they_cannot_carry() -> None:
    env = {"DOCTAG_GATEWAY_TRUSTED_FORWARDERS": '["10.0.0.1", "10.0.0.2"]', "DOCTAG_NAME": "태그 $HOME %s"}
    assert units.parse_env_file(units.render_env_file(env)) == env
    with pytest.raises(units.EnvFileError, match="DOCTAG_X"):
        units.render_env_file({"DOCTAG_X": "it's"})
    with pytest.raises(units.EnvFileError):
        units.render_env_file({"1BAD": "x"})


def test_supervisor_runs_the_units_command_lines_with_the_env_files_variables() -> None:
    paths = units.HostPaths(install_root=Path("/x/opt"), state_dir=Path("/x/state"), service_user=None)
    web = vm_layout.role("web")
    conf = units.render_supervisor(web, paths, {"upload": {"DOCTAG_HTTP_PORT": "8101", "DOCTAG_P": "50%"}})
    for s in web.services:
        unit_exec = next(ln for ln in units.render_unit(s, paths).splitlines() if ln.startswith("ExecStart="))
        assert f"command={unit_exec.removeprefix('ExecStart=')}" in conf
    assert 'environment=DOCTAG_HTTP_PORT="8101",DOCTAG_P="50%%"' in conf
    assert "user=" not in conf and "stdout_logfile=/x/state/log/upload.log" in conf
    assert "user=doctag" in units.render_supervisor(web, units.HostPaths(), {})


def test_supervisor_environment_carries_json_values() -> None:
    """supervisord's environment parser takes no escaped quote inside double quotes: a JSON value
    (the gateway's trusted forwarders) must still reach the service unchanged."""
    from supervisor.datatypes import dict_of_key_value_pairs

    from services.cli import units, vm_layout

    env = {"DOCTAG_GATEWAY_TRUSTED_FORWARDERS": '["10.0.0.1", "10.0.0.2"]', "DOCTAG_HTTP_HOST": "10.0.0.5"}
    text = units.render_supervisor(vm_layout.role("gateway"), units.HostPaths(), {"gateway": env})
    line = next(x for x in text.splitlines() if x.startswith("environment="))
    assert dict_of_key_value_pairs(line.removeprefix("environment=")) == env


def test_supervisor_reads_back_exactly_the_env_files_values() -> None:
    """supervisord's own parser (not a copy of it) gets the same variables systemd would."""
    from supervisor.datatypes import dict_of_key_value_pairs

    env = {"DOCTAG_GATEWAY_TRUSTED_FORWARDERS": '["10.0.0.1", "10.0.0.2"]', "DOCTAG_Q": "50% a,b",
           "DOCTAG_URL": "amqp://u@10.0.0.1:5672/doctag"}
    conf = units.render_supervisor(vm_layout.role("gateway"), units.HostPaths(), {"gateway": env})
    line = next(ln for ln in conf.splitlines() if ln.startswith("environment="))
    assert dict_of_key_value_pairs(line.removeprefix("environment=").replace("%%", "%")) == env
    assert units.parse_env_file(units.render_env_file(env)) == env
