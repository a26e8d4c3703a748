"""Who may make backspace work from GitHub: people with write access, never bots nor itself.

A run spends money and pushes code, so a comment by anyone who can merely read (on a public
repository: everyone) must not start one. Permissions come from GitHub's API and are cached
briefly (a revoked collaborator is refused again within ``ttl`` seconds); an API failure
refuses. Bots are refused without asking (two bots could otherwise talk to each other forever),
and so is backspace's own login (its status comments quote requests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

WRITERS = frozenset({"admin", "maintain", "write"})


class Access:
    def __init__(
        self,
        permission: Callable[[str, str], Awaitable[str]],
        own_login: Callable[[], Awaitable[str]],
        ttl: float = 60.0,
    ) -> None:
        self._permission = permission
        self._own_login = own_login
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._me: str | None = None
        self._pending: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._me_lock = asyncio.Lock()

    async def refusal(self, repo: str, login: str, bot: bool) -> str | None:
        """Why ``login`` may not trigger on ``repo`` (for the log), or None when they may."""
        if bot or login.lower().endswith("[bot]"):
            return f"{login} is a bot"
        me = await self.me()
        if me is None:
            return "backspace's own login is unknown (GET /user failed)"
        if login.lower() == me.lower():
            return f"{login} is backspace itself"
        permission = await self.permission(repo, login)
        if permission not in WRITERS:
            return f"{login} has {permission} access to {repo}, not write"
        return None

    async def me(self) -> str | None:
        async with self._me_lock:  # one GET /user, however many deliveries wait for it
            if self._me is None:
                try:
                    self._me = await self._own_login()
                except Exception as exc:
                    log.warning("GitHub GET /user failed: %s", type(exc).__name__)
                    return None
        return self._me

    async def permission(self, repo: str, login: str) -> str:
        """Cached; concurrent lookups of the same person share one request."""
        key = (repo.lower(), login.lower())
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(key, repo, login))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _lookup(self, key: tuple[str, str], repo: str, login: str) -> str:
        try:
            permission = await self._permission(repo, login)
        except Exception as exc:
            log.warning("GitHub permission check failed: %s", type(exc).__name__)
            return "unknown (the permission check failed)"
        if len(self._cache) > 10_000:  # bounded: old entries go first
            self._cache.clear()
        self._cache[key] = (time.monotonic(), permission)
        return permission
