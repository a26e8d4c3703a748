"""Slack's request signature (v0): an HMAC of the raw body, from the last five minutes."""

from __future__ import annotations

import hashlib
import hmac
import time

MAX_AGE = 300  # seconds, as Slack recommends: an older signed request is a replay


def signed(secret: bytes, body: bytes, timestamp: str, signature: str) -> bool:
    """Whether `signature` is Slack's v0 signature of `body` at `timestamp`, made recently.

    Not slack_sdk's SignatureVerifier: it raises on a timestamp that is not a number and on a
    body that is not UTF-8, which must be a refusal here, not a 500.
    """
    if (
        not (timestamp.isascii() and timestamp.isdigit())
        or abs(time.time() - int(timestamp)) > MAX_AGE
    ):
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode(errors="replace"))
