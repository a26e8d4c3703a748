"""Versioned schema changes: `migrations/<dialect>/NNNN_name.sql`, applied in order, each once.

A backend applies the files whose number its `schema_migrations` table lacks, in one transaction
and under a lock (PostgreSQL: an advisory lock; SQLite: `BEGIN IMMEDIATE`), so that two replicas
starting at once migrate once and a failing file leaves nothing half-done. A deploy changes the
schema by adding a file, never by editing one that shipped: expand (add a nullable column), deploy
every replica, then contract in a later file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str, folder: Path | Traversable | None = None) -> list[Migration]:
    """The dialect's migrations, oldest first: the shipped ones, or those in `folder` (a test's
    own set, e.g. one that fails half-way)."""
    if folder is None:
        folder = resources.files("backspace.orchestrator.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the {dialect} migrations are not numbered 1, 2, 3...: {versions}")
    return found


def statements(sql: str) -> list[str]:
    """A migration file's statements (split at `;` ending a line; no statement here holds one)."""
    return [part.strip() for part in re.split(r";\s*\n", sql + "\n") if part.strip()]
