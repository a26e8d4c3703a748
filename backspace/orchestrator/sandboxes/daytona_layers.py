"""Set-up environments on Daytona: one snapshot of the set-up sandbox per cache key.

- The name is `backspace-env-<instance digest>-<key[:24]>`. Daytona snapshots carry no labels
  (SDK 0.226.1: a name, an id, a state, a size), so the instance is in the name: two servers
  sharing an organisation never evict each other's snapshots.
- The manifest (key, checkout, environment paths) stays in this process's memory, next to the
  snapshot's name, because the snapshot has nowhere for it and the host never reads it back from
  a sandbox. After a restart the table is empty: the first look deletes this instance's snapshots
  it has no manifest for, and setup runs again once per key.
- The limit is a count of snapshots (DAYTONA_ENV_SNAPSHOTS), not megabytes: what a snapshot
  costs is Daytona's storage, and its `size` field's unit is not documented. Past the count the
  least recently used snapshot no live sandbox was created from is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import daytona
from daytona import AsyncDaytona
from daytona_api_client import SnapshotState

from backspace.orchestrator.environment.layer import Layer, LayerManifest, LayerStoreFull
from backspace.orchestrator.errors import SandboxError

if TYPE_CHECKING:
    from backspace.orchestrator.sandboxes.base import Sandbox

log = logging.getLogger(__name__)

PREFIX = "backspace-env-"


@dataclass
class _Entry:
    layer: Layer
    used: float  # monotonic time of the last find or save


class DaytonaLayerStore:
    def __init__(
        self,
        client: Callable[[], AsyncDaytona],
        *,
        instance: str,
        snapshot: str | None,
        max_snapshots: int,
        timeout: float = 600.0,
    ) -> None:
        self._client = client  # the provider's, made on first use
        self._snapshot = snapshot
        self.max_snapshots = max_snapshots
        self.timeout = timeout
        self.prefix = f"{PREFIX}{hashlib.sha256(instance.encode()).hexdigest()[:8]}-"
        self._entries: dict[str, _Entry] = {}
        self._in_use: Counter[str] = Counter()
        self._adopted = False

    @property
    def client(self) -> AsyncDaytona:
        return self._client()

    def identity(self) -> str:
        return self._snapshot or "default"

    def name_for(self, key: str) -> str:
        digest = key.lower() if re.fullmatch(r"[0-9a-f]{24,}", key.lower()) else _sha(key)
        return f"{self.prefix}{digest[:24]}"

    def kept(self) -> list[str]:
        return list(self._entries)

    def in_use(self, key: str) -> int:
        return self._in_use[key]

    def acquire(self, layer: Layer) -> None:
        """A sandbox is being created from `layer`: it is not evicted until `release`."""
        self._in_use[layer.key] += 1

    def release(self, layer: Layer) -> None:
        self._in_use[layer.key] -= 1
        if self._in_use[layer.key] <= 0:
            del self._in_use[layer.key]

    # --- LayerStore --------------------------------------------------------------------------------
    async def find(self, key: str) -> Layer | None:
        await self._adopt()
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            snapshot = await self.client.snapshot.get(entry.layer.location)
        except daytona.DaytonaNotFoundError:
            log.warning("environment snapshot %s is gone; setup runs again", entry.layer.location)
            del self._entries[key]
            return None
        except daytona.DaytonaError as exc:
            raise SandboxError(
                f"could not look up the environment snapshot: {_short(exc)}"
            ) from exc
        if snapshot.state != SnapshotState.ACTIVE:
            log.warning(
                "environment snapshot %s is %s, not active; setup runs again",
                entry.layer.location,
                snapshot.state,
            )
            if snapshot.state in (SnapshotState.ERROR, SnapshotState.BUILD_FAILED):
                await self._delete(entry.layer.location)
                del self._entries[key]
            return None
        entry.used = time.monotonic()
        return entry.layer

    async def save(self, sandbox: Sandbox, manifest: LayerManifest) -> Layer:
        remote = getattr(sandbox, "remote", None)
        if remote is None:
            raise SandboxError("only a Daytona sandbox can be kept as a Daytona environment")
        await self._adopt()
        existing = self._entries.get(manifest.key)
        if existing is not None:  # another run of the same key finished first: keep its layer
            existing.used = time.monotonic()
            return existing.layer
        await self._make_room()
        name = self.name_for(manifest.key)
        try:
            try:
                await remote.create_snapshot(name, timeout=self.timeout)
            except daytona.DaytonaConflictError:  # a stale one of ours, unknown to this process
                await self._delete(name)
                await remote.create_snapshot(name, timeout=self.timeout)
            snapshot = await self.client.snapshot.get(name)
            if snapshot.state != SnapshotState.ACTIVE:
                raise SandboxError(
                    f"snapshot {name} is {snapshot.state}: {snapshot.error_reason or 'not usable'}"
                )
        except BaseException as exc:
            await self._delete(name)
            if isinstance(exc, daytona.DaytonaError):
                raise SandboxError(
                    f"could not keep the environment as snapshot {name}: {_short(exc)}"
                ) from exc
            if isinstance(exc, SandboxError):
                raise SandboxError(f"could not keep the environment: {exc}") from exc
            raise
        size = int((snapshot.size or 0) * 1024**3)
        layer = Layer(manifest=manifest, location=name, size_bytes=size)
        self._entries[manifest.key] = _Entry(layer, time.monotonic())
        return layer

    # --- housekeeping ------------------------------------------------------------------------------
    async def _make_room(self) -> None:
        while len(self._entries) >= self.max_snapshots:
            idle = [(e.used, k) for k, e in self._entries.items() if not self._in_use[k]]
            if not idle:
                raise LayerStoreFull(
                    f"all {len(self._entries)} environment snapshots are in use by running "
                    "sandboxes; raise DAYTONA_ENV_SNAPSHOTS to keep more"
                )
            _, key = min(idle)
            entry = self._entries.pop(key)
            log.info("evicting environment snapshot %s (least recently used)", entry.layer.location)
            await self._delete(entry.layer.location)

    async def _adopt(self) -> None:
        """Once per process: delete this instance's snapshots that have no manifest here."""
        if self._adopted:
            return
        known = {e.layer.location for e in self._entries.values()}
        stale: list[str] = []
        try:
            page, pages = 1, 1
            while page <= pages:
                listing = await self.client.snapshot.list(page=page, limit=100)
                stale += [
                    s.name
                    for s in listing.items
                    if s.name.startswith(self.prefix) and s.name not in known
                ]
                page, pages = page + 1, listing.total_pages
        except daytona.DaytonaError as exc:
            log.warning("could not list Daytona snapshots (will retry): %s", _short(exc))
            return
        self._adopted = True
        for name in stale:
            log.info("deleting environment snapshot %s: no manifest for it here", name)
            await self._delete(name)

    async def _delete(self, name: str) -> None:
        try:
            await self.client.snapshot.delete(name)
        except daytona.DaytonaNotFoundError:
            pass
        except daytona.DaytonaError as exc:
            log.warning("could not delete Daytona snapshot %s: %s", name, _short(exc))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text[:300] or type(exc).__name__
