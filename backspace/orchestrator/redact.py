"""Redaction of every secret the server knows, from events, log lines and error messages."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6


class Redactor:
    """Replaces known secret values (and the encodings git and HTTP put them in) with a marker."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET_LENGTH:
                continue
            variants.add(secret)
            for user in ("x-access-token", "git", ""):
                pair = f"{user}:{secret}".encode()
                variants.add(base64.b64encode(pair).decode())
            variants.add(base64.b64encode(secret.encode()).decode())
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(variants, key=len, reverse=True)

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
