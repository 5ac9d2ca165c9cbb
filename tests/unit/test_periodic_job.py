"""The upload service's background job loop (purge, term statistics): keeps running after a failed
pass, and a stop does not wait forever for a pass that hangs."""
from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from services.upload.periodic import PeriodicJob


class Flaky(PeriodicJob):
    def __init__(self, errors: Counter, hang: bool = False) -> None:
        super().__init__(interval_seconds=0.01, errors=errors)
        self.passes = 0
        self.hang = hang
        self.cancelled = False

    async def run_once(self) -> int:
        self.passes += 1
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.passes == 1:
            raise RuntimeError("the database went away")
        return 0


async def test_a_failed_pass_is_counted_and_the_next_one_runs() -> None:
    errors = Counter("test_periodic_errors", "errors", registry=CollectorRegistry())
    job = Flaky(errors)
    await job.start()
    while job.passes < 3:
        await asyncio.sleep(0.01)
    await job.stop()
    assert errors._value.get() == 1 and job.passes >= 3


async def test_stop_abandons_a_hanging_pass_after_the_grace_period() -> None:
    job = Flaky(Counter("test_periodic_hang", "errors", registry=CollectorRegistry()), hang=True)
    await job.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(job.stop(grace_s=0.1), timeout=5)
    assert job.cancelled and job.stopping
