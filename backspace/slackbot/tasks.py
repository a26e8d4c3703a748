"""Slack calls whose failure never stops a run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


async def safe(call: Awaitable[Any]) -> None:
    """A Slack call whose failure is only logged: a Slack error never stops a run."""
    try:
        await call
    except Exception as exc:
        log.warning("a Slack call failed: %s", type(exc).__name__)
