"""One training run in a child process at a lower CPU priority, watched by the worker.

The child is `python -m <trainer module>` in its own process group, started with `os.nice` and a
torch thread count, so that inference on the same host keeps its share of the CPU. It prints
progress and JSON log lines on stdout; `TrainingRun` parses them, keeps the latest progress (with
elapsed and estimated remaining seconds of the fine-tuning) and the log lines not yet written, and
can be stopped at once (the whole process group is killed: cancellation, time-out, lost lease).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

TAIL_LINES = 20


def _die_with_parent() -> None:
    """Linux: the run is killed when the worker dies (PR_SET_PDEATHSIG), so no orphan keeps the CPU."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1


class TrainingRun:
    def __init__(self, module: str, data_dir: Path, out: Path, spec: Path, *, nice: int, threads: int) -> None:
        self.argv = [sys.executable, "-m", module, "--data-dir", str(data_dir), "--out", str(out), "--spec", str(spec)]
        self.nice = nice
        self.threads = threads
        self.process: asyncio.subprocess.Process | None = None
        self.progress: dict[str, Any] = {"stage": "starting"}
        self.pending_logs: list[str] = []
        self.tail: list[str] = []
        self.started = time.monotonic()
        self._tune_started: float | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        nice = self.nice

        def lower_priority() -> None:   # runs in the child before exec
            os.setpgrp()
            os.nice(nice)
            _die_with_parent()

        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            preexec_fn=lower_priority, limit=1 << 20)
        self._reader = asyncio.create_task(self._read(), name="training-run-output")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict) and event.get("event") == "progress":
                self._progress(event)
                continue
            message = line
            if isinstance(event, dict) and "message" in event:
                extra = {k: v for k, v in event.items() if k not in ("message", "time", "timestamp", "service",
                                                                     "level", "levelname", "name", "logger")}
                message = f"{event.get('levelname') or event.get('level') or 'INFO'} {event['message']}" + (
                    f" {json.dumps(extra, ensure_ascii=False)}" if extra else "")
            message = message[:2000]
            self.pending_logs.append(message)
            self.tail = [*self.tail[-(TAIL_LINES - 1):], message]

    def _progress(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        update = {k: v for k, v in event.items() if k != "event"}
        if update.get("stage") == "fine-tuning" and self._tune_started is None:
            self._tune_started = now
        merged = {**self.progress, **update}
        step, steps = merged.get("step"), merged.get("steps")
        if self._tune_started is not None and isinstance(step, int) and isinstance(steps, int) and step > 0:
            per_step = (now - self._tune_started) / step
            merged["eta_s"] = round(per_step * max(0, steps - step), 1)
        self.progress = merged

    def snapshot(self) -> dict[str, Any]:
        return {**self.progress, "run_elapsed_s": round(time.monotonic() - self.started, 1), "pid": self.pid}

    def take_logs(self) -> list[str]:
        lines, self.pending_logs = self.pending_logs, []
        return lines

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None when it is still running after `timeout` seconds."""
        assert self.process is not None
        try:
            code = await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout)
        except TimeoutError:
            return None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        """Kills the run's whole process group and waits for it."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
