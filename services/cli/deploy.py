"""`doctag deploy`: one host of the inventory, over SSH, from its role's offline bundle.

For a host: copy `dist/doctag-<version>-<role>.tar.gz` (unless the host has it), run its
install.sh (offline venv, atomic `current` switch), write the files `deploy_config` renders for the
host (env files, its role's certificates and keys, its services' secrets), install the systemd
units (or the supervisor configuration), restart the role's services and wait until each answers
/readyz over mutual TLS (and gRPC health where it has gRPC). A deploy whose bundle and rendered
files equal the last one's changes nothing and restarts nothing ("unchanged").

The transport is a command prefix that runs a shell command string on the host: `ssh` by default
(`ssh -p <port> <user>@<ssh_host> <command>`; `--ssh "ssh -F cfg"` adds options), or a template
naming the host with `{name}`, `{address}`, `{ssh_host}`, `{user}`, `{port}` (e.g. `ip netns exec
dt-{name} sh -c` for the multi-host test), used as it is with the command appended.
"""
from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import bundle, prometheus_targets, vm_layout
from .deploy_config import HostConfig, OperatorState, host_paths, render_host
from .inventory import Host, Inventory, InventoryError

DEPLOY_MARK = ".deployed"  # in config_dir: "<bundle digest> <config digest>"


class DeployError(RuntimeError):
    """A deploy step failed; the message names the host and the step."""


@dataclass(frozen=True)
class Transport:
    template: str | None = None

    def argv(self, host: Host) -> list[str]:
        if self.template and "{" in self.template:
            return shlex.split(self.template.format(name=host.name, address=host.address, ssh_host=host.ssh_host,
                                                    user=host.ssh_user, port=host.ssh_port))
        return [*shlex.split(self.template or "ssh"), "-o", "BatchMode=yes", "-p", str(host.ssh_port),
                f"{host.ssh_user}@{host.ssh_host}"]

    def run(self, host: Host, command: str, *, stdin: bytes | None = None, timeout: float = 600,
            check: bool = True, what: str = "") -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([*self.argv(host), command], input=stdin, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            err = (result.stderr or result.stdout).decode(errors="replace").strip()[-2000:]
            raise DeployError(f"{host.name}: {what or command[:80]} failed (exit {result.returncode}): {err}")
        return result


@dataclass(frozen=True)
class Outcome:
    host: str
    role: str
    version: str
    changed: bool
    detail: str
    seconds: float

    def line(self) -> str:
        state = "deployed" if self.changed else "unchanged"
        return f"{self.host} ({self.role}): {state}, {self.version}; {self.detail} [{self.seconds:.1f}s]"


def bundle_for(dist: Path, role: str, version: str | None) -> Path:
    version = version or bundle.release_version()
    path = dist / f"doctag-{version}-{role}.tar.gz"
    if not path.exists():
        raise DeployError(f"no bundle {path}: run `make bundle` (or `doctag release bundle --role {role}`) first")
    return path


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _tar_of(config: HostConfig) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = sorted({str(Path(n).parent) for n in config.files if "/" in n})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o750
            tar.addfile(info)
        for name in sorted(config.files):
            f = config.files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(f.content), f.mode
            tar.addfile(info, io.BytesIO(f.content))
    return buf.getvalue()


class Deployer:
    def __init__(self, inv: Inventory, *, transport: Transport, dist: Path = Path("dist"),
                 version: str | None = None, state_root: Path | None = None, inventory_text: str | None = None,
                 ready_timeout: float = 300.0, log: bool = True) -> None:
        self.inv = inv
        self.transport = transport
        self.dist = dist
        self.version = version
        self.state = OperatorState(state_root or Path("var") / "deploy" / inv.deployment)
        self.inventory_text = inventory_text
        self.ready_timeout = ready_timeout
        self.log = log

    def _say(self, host: Host, message: str) -> None:
        if self.log:
            print(f"[{host.name}] {message}", flush=True)

    def sh(self, host: Host, command: str, **kw: object) -> str:
        return self.transport.run(host, command, **kw).stdout.decode(errors="replace")  # type: ignore[arg-type]

    # -- one host ---------------------------------------------------------------------------
    def deploy(self, host: Host, config: HostConfig | None = None) -> Outcome:
        """`config`: the host's rendered configuration when the caller rendered it already (deploy_all)."""
        started = time.monotonic()
        path = bundle_for(self.dist, host.role, self.version)
        version = bundle.read_member(path, "VERSION").decode().strip()
        digest = bundle.bundle_digest(path)
        config = config or render_host(self.inv, host, self.state, inventory_text=self.inventory_text)
        mark = f"{digest} {config.digest()}"
        root, cfg = host.install_root, host.config_dir
        state = self.sh(host, f"head -c 200 {_q(cfg / DEPLOY_MARK)} 2>/dev/null; echo; "
                              f"readlink {_q(root / 'current')} 2>/dev/null; true", what="reading the host's state")
        lines = [*state.split("\n"), "", ""]
        if lines[0].strip() == mark and lines[1].strip() == version:
            self._say(host, "bundle and configuration unchanged: nothing to do")
            self.wait_ready(host)
            return Outcome(host.name, host.role, version, False, "ready, nothing restarted",
                           time.monotonic() - started)
        self._install(host, path, version)
        self._write_config(host, config)
        restarted = self._restart(host, config)
        self.sh(host, f"printf '%s' {_q(mark)} > {_q(cfg / DEPLOY_MARK)}", what="recording the deploy")
        self.wait_ready(host)
        return Outcome(host.name, host.role, version, True, f"restarted {', '.join(restarted) or 'nothing'}; ready",
                       time.monotonic() - started)

    def _install(self, host: Host, path: Path, version: str) -> None:
        root = host.install_root
        remote = root / "bundles" / path.name
        top = path.name.removesuffix(".tar.gz")
        local_sha = bundle._sha256(path)
        have = self.sh(host, f"sha256sum {_q(remote)} 2>/dev/null | cut -d' ' -f1; true").strip()
        if have != local_sha:
            self._say(host, f"copying {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
            self.transport.run(host, f"mkdir -p {_q(remote.parent)} && cat > {_q(str(remote) + '.part')} && "
                                     f"mv {_q(str(remote) + '.part')} {_q(remote)}",
                               stdin=path.read_bytes(), what="copying the bundle")
        unpack = root / "bundles" / top
        self._say(host, f"installing {version}")
        out = self.sh(host, f"rm -rf {_q(unpack)} && tar -xzf {_q(remote)} -C {_q(root / 'bundles')} && "
                            f"{_q(unpack / 'install.sh')} --prefix {_q(root)} && rm -rf {_q(unpack)}",
                      what="install.sh", timeout=900)
        self._say(host, out.strip().splitlines()[-1] if out.strip() else "installed")

    def _write_config(self, host: Host, config: HostConfig) -> None:
        cfg, user = host.config_dir, host.service_user
        paths = host_paths(host)
        dirs = [cfg, host.state_dir, paths.log_dir, paths.run_dir]
        if host.role == "web":
            dirs.append(host.blob_dir)
        script = [f"mkdir -p {' '.join(_q(d) for d in dirs)}",
                  f"tar -x --no-same-owner -C {_q(cfg)} -f -", f"chmod 0750 {_q(cfg)}"]
        if user:
            script.insert(0, f"id -u {_q(user)} >/dev/null 2>&1 || useradd --system --user-group "
                             f"--home-dir {_q(host.state_dir)} --shell /usr/sbin/nologin {_q(user)}")
            owned = [host.state_dir, *([host.blob_dir] if host.role == "web" else [])]
            script += [f"chgrp -R {_q(user)} {_q(cfg)}", f"chown {_q(user)}: {' '.join(_q(d) for d in owned)}"]
        self.transport.run(host, " && ".join(script), stdin=_tar_of(config), what="writing the configuration")
        if config.units:
            writes = " && ".join(
                f"printf %s {_q(text)} > {_q('/etc/systemd/system/' + name)}" for name, text in config.units.items())
            self.sh(host, writes + " && systemctl daemon-reload", what="installing the systemd units")

    def _restart(self, host: Host, config: HostConfig) -> list[str]:
        services = [s.name for s in host.vm_role.services]
        if host.role == "db":
            self._db_setup(host)
            return ["postgresql", "rabbitmq", "redis"]
        if not services:
            return []
        if host.service_manager == "systemd":
            unit_names = " ".join(_q(f"doctag-{s}.service") for s in services)
            self.sh(host, f"systemctl enable {unit_names} && systemctl restart {unit_names}", what="systemctl restart")
        else:
            paths = host_paths(host)
            venv = host.install_root / "current" / "venv" / "bin"
            conf = _q(paths.supervisor_conf)
            pid = _q(paths.run_dir / "supervisord.pid")
            self.sh(host, f"if [ -f {pid} ] && kill -0 $(cat {pid}) 2>/dev/null; then "
                          f"{_q(venv / 'supervisorctl')} -c {conf} shutdown >/dev/null; "
                          f"while kill -0 $(cat {pid} 2>/dev/null) 2>/dev/null; do sleep 0.2; done; fi; "
                          f"{_q(venv / 'supervisord')} -c {conf}", what="starting supervisord")
        return services

    def _db_setup(self, host: Host) -> None:
        """The db host's own set-up, done on it by the db role's `doctag dbhost setup` (PostgreSQL,
        RabbitMQ, Redis on the private address with TLS, pg_hba per role and host, migrations, the
        passwords this deploy copied into <config_dir>/secrets)."""
        cfg = host.config_dir
        mode = "--systemd" if host.service_manager == "systemd" else "--no-systemd"
        out = self.sh(host, f"{self._doctag(host)} dbhost setup --inventory {_q(cfg / 'inventory.yaml')} "
                            f"--host {_q(host.name)} --data-root {_q(self._db_root(host))} "
                            f"--secrets-dir {_q(cfg / 'secrets')} --pki-dir {_q(cfg / 'pki')} {mode}",
                      what="doctag dbhost setup", timeout=900)
        self._say(host, out.strip().splitlines()[-1] if out.strip() else "db host set up")

    def _doctag(self, host: Host) -> str:
        """The db host's doctag CLI, with the inventory's env for the host (database name, ...)."""
        env = " ".join(_q(f"{k}={v}") for k, v in host.env.items())
        return f"env {env} {_q(host.install_root / 'current' / 'venv' / 'bin' / 'doctag')}"

    @staticmethod
    def _db_root(host: Host) -> Path:
        return host.state_dir / "db"

    # -- readiness --------------------------------------------------------------------------
    def probes(self, host: Host) -> list[tuple[str, str]]:
        """(what, URL or gRPC target) for each check of the host's services."""
        checks: list[tuple[str, str]] = []
        for s in host.vm_role.services:
            if s.name == "gateway":
                checks.append((s.name, f"https://{host.address}:{s.status_port}/readyz"))
            else:
                checks.append((s.name, f"https://{host.address}:{s.http_port}/readyz"))
            if s.grpc_port is not None:
                checks.append((f"{s.name} gRPC", f"grpc://{host.address}:{s.grpc_port}/{s.name}"))
        return checks

    def _grpc_ok(self, target: str, server_role: str) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from services.common.pki import cert_paths, role_dns_name
        from services.common.tls import TlsFiles, channel_credentials

        cert, key = cert_paths(self.state.operator_pki, "gateway")
        creds = channel_credentials(TlsFiles(self.state.operator_pki / "ca.crt", cert, key))
        options = [("grpc.ssl_target_name_override", role_dns_name(server_role))]
        with grpc.secure_channel(target, creds, options=options) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                  timeout=3)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_ready(self, host: Host) -> None:
        if host.role == "db":
            return self._db_ready(host)
        from services.common.pki import cert_paths
        from services.common.tls import ReloadingSSLContext, TlsFiles

        cert, key = cert_paths(self.state.operator_pki, "gateway")
        tls = ReloadingSSLContext(TlsFiles(self.state.operator_pki / "ca.crt", cert, key), server=False)
        pending = dict(self.probes(host))
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(verify=tls.context, timeout=3) as client:
            while pending and time.monotonic() < deadline:
                for what, where in list(pending.items()):
                    if where.startswith("grpc://"):
                        target, _, server_role = where.removeprefix("grpc://").partition("/")
                        ok = self._grpc_ok(target, server_role)
                    else:
                        try:
                            ok = client.get(where).status_code == 200
                        except httpx.HTTPError:
                            ok = False
                    if ok:
                        del pending[what]
                if pending:
                    time.sleep(1)
        if pending:
            raise DeployError(f"{host.name}: not ready after {self.ready_timeout:.0f}s: "
                              + ", ".join(f"{w} ({u})" for w, u in pending.items()) + self._logs_hint(host))
        self._say(host, "ready: " + ", ".join(w for w, _ in self.probes(host)))
        return None

    def _logs_hint(self, host: Host) -> str:
        if host.service_manager == "systemd":
            return f"; see `journalctl -u 'doctag-*'` on {host.name}"
        return f"; logs in {host_paths(host).log_dir} on {host.name}"

    def _db_ready(self, host: Host) -> None:
        out = self.sh(host, f"{self._doctag(host)} dbhost status --data-root {_q(self._db_root(host))} "
                            f"--address {_q(host.address)}", what="doctag dbhost status")
        self._say(host, "ready: " + ", ".join(out.split()))

    # -- rollback ---------------------------------------------------------------------------
    def rollback(self, host: Host) -> Outcome:
        started = time.monotonic()
        root = host.install_root
        out = self.sh(host, f"{_q(root / 'current' / 'install.sh')} rollback --prefix {_q(root)}",
                      what="install.sh rollback")
        self._say(host, out.strip())
        version = self.sh(host, f"readlink {_q(root / 'current')}").strip()
        # the next deploy must not believe the host is as it left it
        self.sh(host, f"rm -f {_q(host.config_dir / DEPLOY_MARK)}")
        config = render_host(self.inv, host, self.state, inventory_text=self.inventory_text)
        restarted = self._restart(host, config)
        self.wait_ready(host)
        return Outcome(host.name, host.role, version, True, f"rolled back; restarted {', '.join(restarted)}; ready",
                       time.monotonic() - started)


def deploy_role(deployer: Deployer, role: str, host_name: str | None) -> list[Outcome]:
    hosts = [deployer.inv.host(host_name)] if host_name else deployer.inv.of_role(role)
    for h in hosts:
        if h.role != role:
            raise InventoryError(f"{deployer.inv.source}: host {h.name} has role {h.role}, not {role}")
    if not hosts:
        raise InventoryError(f"{deployer.inv.source}: no host of role {role!r}")
    return [deployer.deploy(h) for h in hosts]


def deploy_all(deployer: Deployer) -> list[Outcome]:
    """Every host, role after role in dependency order (vm_layout.ROLES: db, model, gateway, web,
    tagging); the hosts of one role at once (replicas are independent of each other). A role's
    certificates are issued before its hosts start, one at a time, so the operator's PKI is never
    written by two threads."""
    outcomes: list[Outcome] = []
    for r in vm_layout.ROLES:
        hosts = deployer.inv.of_role(r.name)
        if not hosts:
            continue
        configs = [render_host(deployer.inv, h, deployer.state, inventory_text=deployer.inventory_text)
                   for h in hosts]
        with ThreadPoolExecutor(max_workers=len(hosts), thread_name_prefix=f"deploy-{r.name}") as pool:
            outcomes.extend(pool.map(deployer.deploy, hosts, configs))
    return outcomes


def write_prometheus_targets(inv: Inventory, path: Path) -> str:
    """Prometheus file_sd targets for every host of the inventory (services/cli/prometheus_targets.py,
    made with the monitoring configuration in infra/prometheus); says what it did."""
    prometheus_targets.write_file_sd(path, [(h.name, h.role, h.address) for h in inv.hosts])
    return f"Prometheus file_sd targets of {len(inv.hosts)} hosts in {path}"
