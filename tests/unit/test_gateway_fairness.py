"""The per-tenant in-flight cap: a flooding tenant waits for its own turns, others do not."""
from __future__ import annotations

import asyncio

import pytest

from gateway.fairness import TenantFairness
from services.common.errors import ProblemError


async def test_cap_queue_and_other_tenants_unaffected() -> None:
    fairness = TenantFairness(2, max_waiting=2, wait_s=5)
    release = asyncio.Event()
    entered: list[str] = []

    async def call(tenant: str, name: str) -> None:
        async with fairness.slot("search-upstream", tenant):
            entered.append(name)
            await release.wait()

    flood = [asyncio.create_task(call("a", f"a{i}")) for i in range(4)]
    await asyncio.sleep(0.05)
    assert entered == ["a0", "a1"] and fairness.in_use("search-upstream", "a") == 2
    # A fifth request of the same tenant finds the waiting line full: 429 at once.
    with pytest.raises(ProblemError) as info:
        async with fairness.slot("search-upstream", "a"):
            pass
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    # Another tenant, and the same tenant on another upstream, go straight through.
    async with fairness.slot("search-upstream", "b"), fairness.slot("upload-upstream", "a"):
        entered.append("b")
    assert entered[-1] == "b"
    release.set()
    await asyncio.gather(*flood)
    assert sorted(entered) == ["a0", "a1", "a2", "a3", "b"]
    assert fairness._lanes == {}  # nothing left behind


async def test_wait_bounded_in_time_and_unauthenticated_not_capped() -> None:
    fairness = TenantFairness(1, max_waiting=10, wait_s=0.1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with fairness.slot("u", "a"):
            await hold.wait()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0.02)
    with pytest.raises(ProblemError) as info:
        async with fairness.slot("u", "a"):
            pass
    assert info.value.status == 503
    async with fairness.slot("u", None):  # no tenant: not capped
        pass
    hold.set()
    await task
    assert fairness._lanes == {}
    off = TenantFairness(0)
    async with off.slot("u", "a"), off.slot("u", "a"):
        pass
