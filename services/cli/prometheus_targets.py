"""Prometheus file-based service discovery for the seven-VM layout.

`doctag deploy` writes the result of `file_sd_targets` for its inventory to the Prometheus host
(`/etc/prometheus/file_sd/doctag.json`, read by infra/prometheus/prometheus.yml); Prometheus
picks up the change without a restart. One entry per service of each host, at the port that
serves its /metrics (the gateway's status port, else the service's HTTP port), labelled with
`job` (the service: infra/prometheus/prometheus.yml scrapes the gateway over plain HTTP and
every other job over mutual TLS), `role` and `host`.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import vm_layout


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def file_sd_targets(hosts: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """File_sd entries for (host name, VM role, address) triples; ValueError names an unknown
    role, an empty address or a host listed twice."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for host, role_name, address in hosts:
        if host in seen:
            raise ValueError(f"host {host!r} is listed twice")
        seen.add(host)
        if not address:
            raise ValueError(f"host {host!r} has no address")
        try:
            role = vm_layout.role(role_name)
        except KeyError as exc:
            raise ValueError(f"host {host!r}: {exc.args[0]}") from None
        for svc in role.services:
            entries.append({"targets": [_hostport(address, svc.status_port or svc.http_port)],
                            "labels": {"job": svc.name, "role": role.name, "host": host}})
    return entries


def write_file_sd(path: Path, hosts: Iterable[tuple[str, str, str]]) -> Path:
    """Writes the entries atomically (Prometheus may read the file at any moment)."""
    text = json.dumps(file_sd_targets(hosts), indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
