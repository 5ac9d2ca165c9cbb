"""Offline release bundles, one per VM role: `dist/doctag-<version>-<role>.tar.gz`.

A bundle holds a wheelhouse of exactly the role's pyproject extras (vm_layout; the CPU torch wheel
only where the role needs torch), the project's wheel, the role's systemd units, configuration
templates, `install.sh` and SHA256SUMS over all of it. The model artifact
(services/model_serving/artifacts) is package data: only the model role's project wheel carries
it, the other roles get the same wheel built from a copy of the sources without it (46 MB less).

The version is `<pyproject version>+<hash of the sources>`: another change, another version, so
install.sh never mistakes one build for another. Everything expensive is cached under
`var/bundle-cache` by content: the dependency wheelhouse by (pyproject's dependencies, extras,
Python), the project wheels by the hash of their sources; an existing bundle whose inputs are
unchanged is left as it is.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import units, vm_layout

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO_ROOT / "infra" / "bundle" / "install.sh"
MIGRATIONS = REPO_ROOT / "infra" / "migrations"
ARTIFACTS = Path("services/model_serving/artifacts")
TORCH_PIN = "torch==2.13.0"
# Every bundle carries supervisor (pure Python, BSD-like licence): hosts without systemd run the
# units' command lines under supervisord (`service_manager: supervisor`).
ALWAYS = ("supervisor>=4.2",)
_SKIP_DIRS = {"__pycache__", "build", ".pytest_cache", ".mypy_cache"}


class BundleError(RuntimeError):
    """A bundle cannot be built; the message says why."""


@dataclass(frozen=True)
class Built:
    path: Path
    role: str
    version: str
    reused: bool
    seconds: float


def pyproject(root: Path = REPO_ROOT) -> dict[str, object]:
    with (root / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _project_version(root: Path) -> str:
    project = pyproject(root)["project"]
    assert isinstance(project, dict)
    return str(project["version"])


def _walk(base: Path, rel: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(base / rel):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                yield (Path(dirpath) / name).relative_to(base)


def source_files(root: Path = REPO_ROOT, *, with_artifacts: bool = True) -> list[Path]:
    """The files the project wheel is built from (relative to `root`)."""
    files = [Path("pyproject.toml"), Path("README.md")]
    for top in ("services", "gateway"):
        files += [p for p in _walk(root, Path(top)) if with_artifacts or ARTIFACTS not in p.parents]
    return files


def _digest(root: Path, files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for rel in files:
        h.update(str(rel).encode() + b"\0")
        with (root / rel).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def release_version(root: Path = REPO_ROOT) -> str:
    """`<version>+<12 hex digits>` over everything a bundle takes from the repository."""
    extra = [Path("infra/bundle/install.sh"), *_walk(root, Path("infra/migrations"))]
    return f"{_project_version(root)}+{_digest(root, [*source_files(root), *extra])[:12]}"


def _run(cmd: list[str], what: str, **kw: object) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise BundleError(f"{what} failed ({' '.join(cmd[:6])} ...):\n{(result.stderr or result.stdout)[-3000:]}")


def project_wheel(cache: Path, *, with_artifacts: bool, root: Path = REPO_ROOT, python: str = sys.executable) -> Path:
    """The project's wheel (with or without the model artifact), built once per source hash."""
    files = source_files(root, with_artifacts=with_artifacts)
    key = _digest(root, files)
    out = cache / "project" / key
    wheels = sorted(out.glob("doctag-*.whl")) if out.is_dir() else []
    if wheels:
        return wheels[0]
    stage = cache / "stage" / key
    shutil.rmtree(stage, ignore_errors=True)
    for rel in files:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, stage / rel)
    tmp = cache / "project" / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp),
          str(stage)], "building the project wheel")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return sorted(out.glob("doctag-*.whl"))[0]


def requirements(role: vm_layout.VmRole, version: str) -> list[str]:
    reqs = [f"doctag[{','.join(role.extras)}]=={version}" if role.extras else f"doctag=={version}", *ALWAYS]
    if role.needs_torch:
        reqs.insert(0, TORCH_PIN)  # first and pinned, as `make setup` does: nothing pulls a CUDA build
    return reqs


def _deps_key(role: vm_layout.VmRole, root: Path, python: str) -> str:
    meta = pyproject(root)["project"]
    assert isinstance(meta, dict)
    probe = "import sys, sysconfig; print(sys.version_info[:2], sysconfig.get_platform())"
    pyver = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    body = json.dumps({"deps": meta.get("dependencies"), "optional": meta.get("optional-dependencies"),
                       "extras": role.extras, "torch": role.needs_torch, "always": ALWAYS, "python": pyver},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def dependency_wheels(role: vm_layout.VmRole, cache: Path, wheel: Path, *, root: Path = REPO_ROOT,
                      python: str = sys.executable) -> list[Path]:
    """Every third-party wheel the role installs (pip wheel resolves them once; cached by content)."""
    key = _deps_key(role, root, python)
    out = cache / "deps" / key
    if (out / ".complete").exists():
        return sorted(out.glob("*.whl"))
    tmp = cache / "deps" / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    version = wheel.name.split("-")[1]
    reqs = requirements(role, version)
    extras = f"[{','.join(role.extras)}]" if role.extras else ""
    reqs = [f"doctag{extras} @ {wheel.resolve().as_uri()}" if r.startswith("doctag") else r for r in reqs]
    _run([python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp), *reqs],
         f"collecting the wheels of the {role.name} role")
    for own in tmp.glob("doctag-*.whl"):
        own.unlink()
    if not role.needs_torch and any(tmp.glob("torch-*.whl")):
        raise BundleError(f"the {role.name} role does not need torch, yet its extras pull it in")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".complete").touch()
    return sorted(out.glob("*.whl"))


def is_cached(role_name: str, cache: Path, *, root: Path = REPO_ROOT, python: str = sys.executable) -> bool:
    """True when the role's third-party wheels are cached: building its bundle then only builds the
    small project wheel and packs files (no pip resolution); the tests take the heavy lock otherwise."""
    role = vm_layout.role(role_name)
    return (cache / "deps" / _deps_key(role, root, python) / ".complete").exists()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_tar(src: Path, top: str, dest: Path) -> None:
    """A reproducible .tar.gz: sorted names, owner root, fixed mtimes and modes."""
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p for p in src.rglob("*"))
        for path in [src, *paths]:
            rel = path.relative_to(src)
            info = tar.gettarinfo(str(path), arcname=str(Path(top) / rel) if str(rel) != "." else top)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            executable = path.is_dir() or os.access(path, os.X_OK)
            info.mode = 0o755 if executable else 0o644
            if path.is_file():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    tmp.replace(dest)


def _stage(role: vm_layout.VmRole, version: str, wheels: list[Path], stage: Path, pyver: str) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "wheelhouse").mkdir(parents=True)
    for w in wheels:
        target = stage / "wheelhouse" / w.name
        try:
            os.link(w, target)  # same filesystem as the cache: no copy
        except OSError:
            shutil.copy2(w, target)
    (stage / "VERSION").write_text(version + "\n")
    (stage / "ROLE").write_text(role.name + "\n")
    (stage / "PYTHON_VERSION").write_text(pyver + "\n")
    project_version = version.split("+")[0]
    (stage / "requirements.txt").write_text("\n".join(requirements(role, project_version)) + "\n")
    shutil.copy2(INSTALL_SH, stage / "install.sh")
    (stage / "install.sh").chmod(0o755)
    if role.services:
        (stage / "systemd").mkdir()
        for name, text in units.render_units(role, units.HostPaths()).items():
            (stage / "systemd" / name).write_text(text, encoding="utf-8")
    config = stage / "config"
    config.mkdir()
    if any(s.name == "gateway" for s in role.services):
        shutil.copy2(REPO_ROOT / "gateway" / "kong.yml", config / "kong.yml.template")
    if role.name == "db":
        shutil.copytree(MIGRATIONS, stage / "migrations", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (config / "README").write_text(
        "Configuration templates of this role. `doctag deploy` writes the host's real files into its\n"
        "config_dir (env files per service, certificates, secrets); see README, 'Deploying on seven VMs'.\n")
    lines = [f"{_sha256(p)}  {p.relative_to(stage)}" for p in sorted(stage.rglob("*")) if p.is_file()]
    (stage / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def build(role_name: str, out_dir: Path, *, cache: Path | None = None, root: Path = REPO_ROOT,
          python: str = sys.executable, version: str | None = None) -> Built:
    """Builds (or reuses) `out_dir/doctag-<version>-<role>.tar.gz`."""
    import time

    started = time.monotonic()
    role = vm_layout.role(role_name)
    cache = (cache or root / "var" / "bundle-cache").resolve()
    version = version or release_version(root)
    dest = out_dir / f"doctag-{version}-{role.name}.tar.gz"
    wheel = project_wheel(cache, with_artifacts=role.needs_torch, root=root, python=python)
    deps = dependency_wheels(role, cache, wheel, root=root, python=python)
    inputs = hashlib.sha256(json.dumps([version, str(wheel), [str(d) for d in deps]]).encode()).hexdigest()
    marker = out_dir / f".{dest.name}.inputs"
    if dest.exists() and marker.exists() and marker.read_text().strip() == inputs:
        return Built(dest, role.name, version, True, time.monotonic() - started)
    pyver = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    top = f"doctag-{version}-{role.name}"
    stage = cache / "bundles" / top
    _stage(role, version, [*deps, wheel], stage, pyver)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tar(stage, top, dest)
    shutil.rmtree(stage, ignore_errors=True)
    marker.write_text(inputs + "\n")
    return Built(dest, role.name, version, False, time.monotonic() - started)


def extract(bundle: Path, into: Path) -> Path:
    """Unpacks a bundle (tests, the deploy's local checks); returns its top directory."""
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")
        top = tar.getnames()[0].split("/")[0]
    return into / top


def bundle_digest(bundle: Path) -> str:
    """The bundle's identity for deploys: the sha256 of its SHA256SUMS (not of the compressed bytes)."""
    with tarfile.open(bundle) as tar:
        for member in tar:
            if member.name.endswith("/SHA256SUMS") and member.name.count("/") == 1:
                fh = tar.extractfile(member)
                assert fh is not None
                return hashlib.sha256(fh.read()).hexdigest()
    raise BundleError(f"{bundle}: no SHA256SUMS in it: not a doctag bundle")


def read_member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        for member in tar:
            if member.name.split("/", 1)[-1] == name and member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                return fh.read()
    raise BundleError(f"{bundle}: no {name} in it")

