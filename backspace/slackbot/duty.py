"""The duty to report one run in Slack, held like a run's lease so that any replica can carry it.

The replica that received the command takes the duty; while it reports, it renews the duty's
lease and records how far it has told the thread (the cursor: the last event seq posted). If it
stops (a deploy, a crash), its lease expires and another replica adopts the duty: it finds the
status message and the thread in the run's meta, replays the events up to the cursor without
posting them, and carries on. The final message is claimed in the database first (`end`: true
once, for the duty's current holder only), so it is posted once.

The store failing is no reason to stop telling a run's story: a renewal that cannot reach the
database keeps the duty (nobody else can take it meanwhile), and an end that cannot be recorded
still posts.
"""

from __future__ import annotations

import asyncio
import logging

from backspace.orchestrator.store import RunStore, StoreError
from backspace.orchestrator.store.records import Duty

log = logging.getLogger(__name__)

KIND = "slack"


class ReportingDuty:
    """One held duty: renewed by `keep`, given up by `release`, ended by `end`."""

    def __init__(self, store: RunStore, duty: Duty, lease_seconds: float) -> None:
        self.store = store
        self.duty = duty
        self.lease_seconds = lease_seconds
        self.cursor = duty.cursor  # the last seq told (what the store has, or more)
        self._saved = duty.cursor
        self.ended = False  # the final message is claimed: renewals stop, nothing is lost

    @property
    def run_id(self) -> str:
        return self.duty.run_id

    @classmethod
    async def take(
        cls, store: RunStore, run_id: str, holder: str, lease_seconds: float
    ) -> ReportingDuty | None:
        """The duty for a run this replica starts reporting; None when another holds it."""
        duty = await store.take_duty(KIND, run_id, holder, lease_seconds)
        return cls(store, duty, lease_seconds) if duty is not None else None

    @classmethod
    async def adopt(cls, store: RunStore, holder: str, lease_seconds: float) -> list[ReportingDuty]:
        """The duties whose holder stopped renewing them, now this replica's."""
        duties = await store.adopt_duties(KIND, holder, lease_seconds)
        return [cls(store, duty, lease_seconds) for duty in duties]

    def told(self, seq: int) -> None:
        """Every event up to `seq` is in the thread (saved at the next `save` or `keep`)."""
        self.cursor = max(self.cursor, seq)

    async def save(self) -> bool:
        """Record the cursor if it moved; False when the duty is no longer ours."""
        if self.cursor == self._saved:
            return True
        return await self.keep()

    async def keep(self) -> bool:
        """Renew the lease (and record the cursor); False when another replica adopted it."""
        return await self._keep(self.lease_seconds)

    async def release(self) -> None:
        """Give it up now (this replica stops): another adopts it without waiting for a lease."""
        await self._keep(0)

    async def keeper(self) -> None:
        """Renew every third of a lease; return when the duty was lost."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if self.ended:
                continue  # the reporter posts its final message; it stops the keeper then
            if not await self.keep() and not self.ended:
                log.warning("run %s: another replica reports it now", self.run_id)
                return

    async def end(self) -> bool:
        """Claim the final message: True once, for the holder (then it posts it)."""
        self.ended = True
        try:
            return await self.store.end_duty(self.duty)
        except StoreError as exc:
            log.warning(
                "run %s: the end of its Slack report was not recorded: %s", self.run_id, exc
            )
            return True

    async def _keep(self, lease_seconds: float) -> bool:
        cursor = self.cursor
        try:
            kept = await self.store.keep_duty(self.duty, cursor, lease_seconds)
        except StoreError as exc:
            log.warning("run %s: its Slack report's lease was not renewed: %s", self.run_id, exc)
            return True
        if kept:
            self._saved = cursor
        return kept
