"""Rate limits on starting runs: a token bucket per API key and one per client address.

A run costs money (the model) and machine time (the sandbox), so POST /api/code is limited;
reading runs and streams is not. Over the limit the answer is 429 with Retry-After.

In a fleet (a shared store: PostgreSQL) the buckets live in the database (`take_tokens`), so a
client spreading its requests over the replicas gets one burst, not one per replica. A lone
server (SQLite) keeps them in memory: nobody else counts, and no request pays a write. Either
way an API key's bucket is named by its hash, never by the key.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from backspace.orchestrator.store import RunStore, StoreError

log = logging.getLogger(__name__)

MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`per_minute` requests per key, bursts up to `burst`; memory bounded by MAX_BUCKETS."""

    def __init__(self, per_minute: float, burst: int, store: RunStore | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._store = store if store is not None and store.shared else None

    async def take(self, key: str) -> float:
        """0 when allowed (a token is spent); otherwise the seconds until one is available."""
        return await self.take_all([key])

    async def take_all(self, keys: list[str]) -> float:
        """Spend one token from each bucket only when every one has a token: a request that
        one bucket refuses costs the others nothing. 0 when allowed, else the longest wait.
        Shared by every replica when the store is; if that store fails, this process's own
        buckets still limit (a database outage is no free pass, nor a refusal of everyone)."""
        if self._store is not None:
            try:
                return await self._store.take_tokens(
                    [f"api:{key}" for key in keys], self.rate, self.burst
                )
            except StoreError as exc:
                log.warning("the shared rate limit is unavailable, counting here: %s", exc)
        return self.take_here(keys)

    def take_here(self, keys: list[str]) -> float:
        """`take_all` on this process's own buckets."""
        now = time.monotonic()
        buckets = [self._refill(key, now) for key in keys]
        short = [b for b in buckets if b.tokens < 1]
        if not short:
            for bucket in buckets:
                bucket.tokens -= 1
            return 0.0
        if self.rate <= 0:
            return math.inf
        return max((1 - b.tokens) / self.rate for b in short)

    def _refill(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def _evict(self, now: float) -> None:
        """Drop the buckets that have refilled (they carry no state worth keeping)."""
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


def key_id(api_key: str) -> str:
    """A bucket name for an API key that does not keep the key itself in memory."""
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
