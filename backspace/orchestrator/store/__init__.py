"""The run store: runs, their event log, the queue and the bell (see `base.RunStore`).

`open_store` picks the backend: PostgreSQL when BACKSPACE_DATABASE_URL is set (several replicas),
else the SQLite file at BACKSPACE_DB (one process, the default).
"""

from __future__ import annotations

from backspace.orchestrator.errors import StoreError as StoreError
from backspace.orchestrator.errors import StoreFull as StoreFull
from backspace.orchestrator.store.base import LeaseLost as LeaseLost
from backspace.orchestrator.store.base import RunStore as RunStore
from backspace.orchestrator.store.records import COLUMNS as COLUMNS
from backspace.orchestrator.store.records import Cancel as Cancel
from backspace.orchestrator.store.records import CancelOutcome as CancelOutcome
from backspace.orchestrator.store.records import Claim as Claim
from backspace.orchestrator.store.records import Fence as Fence
from backspace.orchestrator.store.records import NewEvent as NewEvent
from backspace.orchestrator.store.records import PullRequestRecord as PullRequestRecord
from backspace.orchestrator.store.records import Run as Run
from backspace.orchestrator.store.records import RunEnd as RunEnd
from backspace.orchestrator.store.records import RunError as RunError
from backspace.orchestrator.store.sqlite import SqliteStore as SqliteStore
