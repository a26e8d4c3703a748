"""Redaction of every secret the server knows, from events, log lines and error messages."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6


class Redactor:
    """Replaces known secret values (and the encodings git and HTTP put them in) with a marker."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._fixed: set[str] = set()
        for secret in secrets:
            self._fixed |= _variants(secret)
        self._passing: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        self._sort()

    def add(self, secret: str) -> None:
        """A secret known for a while only (a run's GitHub App token), until `discard`."""
        with self._lock:
            self._passing[secret] = _variants(secret)
            self._sort()

    def discard(self, secret: str) -> None:
        with self._lock:
            if self._passing.pop(secret, None) is not None:
                self._sort()

    def _sort(self) -> None:
        # Longest first, so a secret that contains another is replaced whole. The list is
        # replaced, never changed in place: a reader on another thread sees one or the other.
        every = self._fixed.union(*self._passing.values())
        self._secrets = sorted(every, key=len, reverse=True)

    @property
    def values(self) -> list[str]:
        """The secrets and their encodings, to look for in a diff."""
        return list(self._secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def data(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


def _variants(secret: str) -> set[str]:
    """The secret and the encodings git and HTTP put it in (Basic credentials)."""
    if len(secret) < MIN_SECRET_LENGTH:
        return set()
    variants = {secret, base64.b64encode(secret.encode()).decode()}
    for user in ("x-access-token", "git", ""):
        variants.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return variants
