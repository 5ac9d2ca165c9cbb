#!/usr/bin/env bash
# doctag offline installer: one in every release bundle (`make bundle`), and a copy in every
# installed version (<prefix>/<version>/install.sh) so `rollback` needs no bundle.
#
#   install.sh [--prefix DIR] [--python PY]   verify SHA256SUMS, install <prefix>/<version>/venv with
#                                             `pip install --no-index` from the bundle's wheelhouse,
#                                             switch <prefix>/current to it atomically, keep <prefix>/previous
#   install.sh rollback [--prefix DIR]        switch current back to previous (and previous to what was current)
#   install.sh verify                         only check the bundle's checksums
#
# Idempotent: the same version installed with the same checksums, and current -> nothing changes.
# Never reaches a network: pip gets --no-index, no configuration file and no PIP_* variables.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
action=install
prefix=""
python=""
if [[ $# -gt 0 && $1 != -* ]]; then action=$1; shift; fi
while [[ $# -gt 0 ]]; do
  case $1 in
    --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; python=$2; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
# Run from an installed version (<prefix>/<version>/install.sh rollback): that prefix by default.
if [[ -z $prefix ]]; then
  if [[ -f $here/.installed ]]; then prefix=$(dirname "$here"); else prefix=/opt/doctag; fi
fi
[[ $prefix == /* ]] || prefix="$(pwd)/$prefix"

verify_bundle() {
  cd "$here"
  [[ -f SHA256SUMS ]] || die "refusing: $here/SHA256SUMS is missing (not a complete bundle)"
  local listed actual extra out
  listed=$(sed -E 's/^[0-9a-f]{64}  //' SHA256SUMS | LC_ALL=C sort)
  actual=$(find . -type f ! -path ./SHA256SUMS -printf '%P\n' | LC_ALL=C sort)
  extra=$(LC_ALL=C comm -13 <(printf '%s\n' "$listed") <(printf '%s\n' "$actual"))
  [[ -z $extra ]] || die "refusing to install: files not listed in SHA256SUMS: $(echo $extra)"
  if ! out=$(LC_ALL=C sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
    die "refusing to install: checksum mismatch in $here:"$'\n'"$out"
  fi
}

# Points <prefix>/<name> at <target> atomically: a new symlink under a temporary name, renamed over it.
relink() {
  local name=$1 target=$2 tmp="$prefix/.$1.$$"
  ln -sfn "$target" "$tmp"
  mv -T "$tmp" "$prefix/$name"
}

switch_to() {
  local version=$1 current
  current=$(readlink "$prefix/current" 2>/dev/null || true)
  if [[ -n $current && $current != "$version" ]]; then relink previous "$current"; fi
  relink current "$version"
}

installed_ok() {  # version dir complete, same checksums as this bundle, and its venv imports doctag
  local target=$1
  [[ -f $target/.installed ]] && cmp -s "$target/SHA256SUMS" "$here/SHA256SUMS" \
    && "$target/venv/bin/python" -c 'import services.cli.main' >/dev/null 2>&1
}

do_install() {
  verify_bundle
  local version role target pyver want
  version=$(cat "$here/VERSION")
  role=$(cat "$here/ROLE")
  target="$prefix/$version"
  mkdir -p "$prefix"
  if installed_ok "$target"; then
    if [[ $(readlink "$prefix/current" 2>/dev/null || true) == "$version" ]]; then
      echo "doctag $version ($role) is already installed in $target and verified; nothing changed"
      return 0
    fi
    switch_to "$version"
    echo "doctag $version ($role) was already installed in $target; current now points to it"
    return 0
  fi
  if [[ -f $target/.installed ]]; then
    die "refusing: $target holds doctag $version with other contents than this bundle (or a damaged venv); remove it or build a new version"
  fi
  python=${python:-$(command -v python3.11 || command -v python3 || true)}
  [[ -n $python ]] || die "no python3 found: install python3 and python3-venv, or pass --python"
  want=$(cat "$here/PYTHON_VERSION")
  pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
    || die "$python does not run as a Python interpreter; this bundle's wheels are for Python $want (pass --python)"
  [[ $pyver == "$want" ]] || die "$python is Python $pyver; this bundle's wheels are for Python $want (pass --python)"
  rm -rf "$target"  # an interrupted earlier attempt (no .installed marker)
  mkdir -p "$target"
  echo "installing doctag $version ($role) into $target with $python (offline) ..."
  # No pip configuration, no PIP_* variables, no index: only the bundle's wheelhouse.
  local -a clean=(env)
  while IFS='=' read -r name _; do [[ $name == PIP_* ]] && clean+=(-u "$name"); done < <(env)
  "${clean[@]}" "$python" -m venv "$target/venv"
  "${clean[@]}" PIP_CONFIG_FILE=/dev/null "$target/venv/bin/python" -m pip install --quiet --no-index \
    --no-cache-dir --disable-pip-version-check --find-links "$here/wheelhouse" -r "$here/requirements.txt"
  cp "$here/SHA256SUMS" "$here/VERSION" "$here/ROLE" "$here/PYTHON_VERSION" "$here/requirements.txt" "$target/"
  cp "$here/install.sh" "$target/install.sh"
  local extra_dir
  for extra_dir in systemd config migrations; do
    if [[ -d $here/$extra_dir ]]; then cp -r "$here/$extra_dir" "$target/"; fi
  done
  if [[ -d $here/migrations ]]; then
    # services/common/migrate.py finds the migrations beside the installed packages (site-packages/
    # infra/migrations, as infra/migrations beside services/ in a checkout): `doctag db upgrade` works.
    local site
    site=$("$target/venv/bin/python" -c 'import os, services; print(os.path.dirname(os.path.dirname(services.__file__)))')
    mkdir -p "$site/infra"
    cp -r "$here/migrations" "$site/infra/migrations"
  fi
  touch "$target/.installed"
  switch_to "$version"
  echo "doctag $version ($role) installed in $target; $prefix/current -> $version"
}

do_rollback() {
  local previous current
  previous=$(readlink "$prefix/previous" 2>/dev/null || true)
  [[ -n $previous ]] || die "no previous version in $prefix to roll back to"
  [[ -f $prefix/$previous/.installed ]] || die "the previous version $previous is not (completely) installed in $prefix"
  current=$(readlink "$prefix/current" 2>/dev/null || true)
  relink current "$previous"
  if [[ -n $current ]]; then relink previous "$current"; fi
  echo "rolled back: $prefix/current -> $previous (was ${current:-nothing})"
}

case $action in
  install) do_install ;;
  rollback) do_rollback ;;
  verify) verify_bundle; echo "bundle $(cat "$here/VERSION") ($(cat "$here/ROLE")): every checksum matches" ;;
  *) die "unknown action '$action': install (default), rollback or verify" ;;
esac
