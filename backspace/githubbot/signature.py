"""GitHub's webhook signature: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body>``."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def signed(secret: bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is GitHub's signature of ``body`` with ``secret`` (constant time).

    A missing or malformed header is simply not a signature. The legacy SHA-1
    ``X-Hub-Signature`` is never accepted: only SHA-256.
    """
    if not secret or not header.startswith(PREFIX):
        return False
    expected = PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode(errors="replace"))
