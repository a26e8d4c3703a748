"""A set-up environment, kept so that later runs start from it instead of running setup again.

A layer is what setup left in the work tree and the sandbox's home, with the checkout it was
made on. Each backend keeps layers its own way (`LayerStore`): the local one as directories
mounted read-only under an overlay, Daytona as snapshots. A sandbox created from a layer starts
with its files; nothing it then writes reaches the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backspace.orchestrator.sandboxes.base import Sandbox


@dataclass(frozen=True)
class LayerManifest:
    """What the host knows about a layer, written by the host, never read from the sandbox."""

    key: str
    base_sha: str  # the commit checked out when setup ran
    environment_paths: tuple[str, ...]  # work-tree paths setup wrote: never published


@dataclass(frozen=True)
class Layer:
    manifest: LayerManifest
    location: str  # the backend's handle: a host directory, a snapshot name
    size_bytes: int = 0

    @property
    def key(self) -> str:
        return self.manifest.key


class LayerStoreFull(Exception):
    """The layer does not fit within the cache's size limit, even after evicting every unused
    layer; the message says how big it is and which setting raises the limit."""


class LayerStore(Protocol):
    def identity(self) -> str:
        """The base image or snapshot sandboxes start from: part of every cache key."""
        ...

    async def find(self, key: str) -> Layer | None:
        """The layer for `key`, marked as just used; None when there is none."""
        ...

    async def save(self, sandbox: Sandbox, manifest: LayerManifest) -> Layer:
        """Keep the sandbox's work tree and home as the layer for `manifest.key`, evicting the
        least recently used layers past the size limit; LayerStoreFull when it cannot fit.
        The sandbox must have no command running; it goes on unchanged."""
        ...
