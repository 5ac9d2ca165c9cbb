"""Counters with an expiry, in this process (`LocalCounters`) or in Redis (`RedisCounters`,
shared by every gateway process that uses the same server: exact, since every change is
one Lua script, which Redis runs atomically).

Used by `rate-limiting` (a counter per identifier and window) and by the login throttle
(failures per user and per address, and the time a lock-out ends).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio as aioredis


class CounterStoreError(Exception):
    """The store (Redis) could not be reached or answered an error."""


class Counters(Protocol):
    async def incr(self, keys: Sequence[tuple[str, int]]) -> list[int]:
        """Adds 1 to each key (created with its TTL in seconds when absent); the new values."""

    async def decr(self, keys: Sequence[str]) -> None:
        """Takes 1 back from each key (that still exists)."""

    async def get(self, key: str) -> int:
        """The value, 0 when absent or expired."""

    async def put(self, key: str, value: int, ttl: int) -> None:
        """Sets the value with a TTL in seconds."""

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class LocalCounters:
    """In-process counters; nothing awaits between read and write, so they are exact per process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._values: dict[str, tuple[int, float]] = {}
        self._clock = clock
        self._ops = 0

    def _live(self, key: str) -> int | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._values[key]
            return None
        return entry[0]

    def _sweep(self) -> None:
        self._ops += 1
        if self._ops % 1024 == 0:
            now = self._clock()
            for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
                del self._values[key]

    async def incr(self, keys: Sequence[tuple[str, int]]) -> list[int]:
        self._sweep()
        out = []
        for key, ttl in keys:
            current = self._live(key)
            if current is None:
                self._values[key] = (1, self._clock() + ttl)
                out.append(1)
            else:
                self._values[key] = (current + 1, self._values[key][1])
                out.append(current + 1)
        return out

    async def decr(self, keys: Sequence[str]) -> None:
        for key in keys:
            current = self._live(key)
            if current is not None:
                self._values[key] = (current - 1, self._values[key][1])

    async def get(self, key: str) -> int:
        return self._live(key) or 0

    async def put(self, key: str, value: int, ttl: int) -> None:
        self._sweep()
        self._values[key] = (value, self._clock() + ttl)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def close(self) -> None:
        self._values.clear()


# INCR each key, giving a new key its TTL: one atomic round trip (a script runs alone in Redis).
_INCR_WITH_TTL = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('INCR', key)
  if value == 1 then redis.call('EXPIRE', key, ARGV[i]) end
  out[i] = value
end
return out
"""

# DECR only keys that still exist: a key that expired in between must not come back without a TTL.
_DECR_EXISTING = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('DECR', key) end
end
return 0
"""


class RedisCounters:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._incr = client.register_script(_INCR_WITH_TTL)
        self._decr = client.register_script(_DECR_EXISTING)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0) -> RedisCounters:
        return cls(aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s))

    async def incr(self, keys: Sequence[tuple[str, int]]) -> list[int]:
        try:
            results = await self._incr(keys=[k for k, _ in keys], args=[ttl for _, ttl in keys])
        except aioredis.RedisError as exc:
            raise CounterStoreError(str(exc)) from exc
        return [int(v) for v in results]

    async def decr(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await self._decr(keys=list(keys))
        except aioredis.RedisError as exc:
            raise CounterStoreError(str(exc)) from exc

    async def get(self, key: str) -> int:
        try:
            value = await self.client.get(key)
        except aioredis.RedisError as exc:
            raise CounterStoreError(str(exc)) from exc
        return int(value) if value is not None else 0

    async def put(self, key: str, value: int, ttl: int) -> None:
        try:
            await self.client.set(key, value, ex=ttl)
        except aioredis.RedisError as exc:
            raise CounterStoreError(str(exc)) from exc

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete(key)
        except aioredis.RedisError as exc:
            raise CounterStoreError(str(exc)) from exc

    async def close(self) -> None:
        await self.client.aclose()
