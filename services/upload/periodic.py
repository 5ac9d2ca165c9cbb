"""A job that runs `run_once` every `interval_seconds` in the background until stopped (the purge and
term statistics jobs): a failed pass is counted and logged, and the next one runs as planned."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter

log = logging.getLogger(__name__)


class PeriodicJob:
    name = "job"

    def __init__(self, *, interval_seconds: float, errors: Counter) -> None:
        self.interval_seconds = interval_seconds
        self.errors = errors
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run_once(self) -> int:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops after the pass in progress, or abandons it (its transaction rolled back) after `grace_s`."""
        self._stopping.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep running after any failure
                self.errors.inc()
                log.warning("%s error; retrying next interval", self.name,
                            extra={"error": f"{type(exc).__name__}: {exc}"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_seconds)
