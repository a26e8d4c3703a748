"""A fake GitHub whose clock can be set apart from the machine's: GitHub's view of a skewed server.

Why: a server whose clock runs behind or ahead signs JWTs GitHub refuses ('iat' in the future,
'exp' already past). The server's clock cannot be moved in a test, so GitHub's is: the JWT a
request carries is checked again against `time.time() + clock_offset`, with the fake's own
rules (`check_jwt`) and messages. With `clock_offset` 0 it is the plain fake.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tests.fakes.github import FakeGitHub, _Principal
from tests.fakes.github_app import JwtRefused, check_jwt


class SkewedGitHub(FakeGitHub):
    clock_offset: float = 0.0
    """Seconds GitHub's clock is ahead of this machine's (negative: behind)."""

    def _principal(self, headers: Mapping[str, str]) -> _Principal:
        principal = super()._principal(headers)
        if principal.kind != "app" or not self.clock_offset:
            return principal
        credential = headers.get("authorization", "").strip().partition(" ")[2].strip()
        try:
            check_jwt(credential, self._apps, now=time.time() + self.clock_offset)
        except JwtRefused as refused:
            return _Principal("jwt_refused", error=str(refused))
        return principal
