"""Webhook deliveries as GitHub sends them: signed JSON POSTs from "GitHub-Hookshot".

Why: the webhook endpoint must be tested against what GitHub really sends, headers and
signature included (https://docs.github.com/en/webhooks/webhook-events-and-payloads): a JSON
body, ``X-GitHub-Event``, ``X-GitHub-Delivery`` (a GUID, the same one on a redelivery),
``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body with the secret>`` (and the legacy
SHA-1 ``X-Hub-Signature``), ``User-Agent: GitHub-Hookshot/<hex>``.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.tls import TLS

__all__ = ["Delivery", "Hook", "send", "signature"]

USER_AGENT = "GitHub-Hookshot/5f3a9c1"


@dataclass
class Hook:
    """A repository's (or organisation's) webhook: where, and with which secret."""

    id: int
    url: str
    secret: str | None
    events: frozenset[str] | None = None
    """The events it is subscribed to; None is "send me everything"."""


@dataclass
class Delivery:
    """One POST GitHub made: what it sent and what it was answered (status 0: unreachable)."""

    id: str
    event: str
    payload: dict[str, Any]
    url: str
    secret: str | None
    hook_id: int
    status: int = 0
    response: str = ""
    sent_at: float = 0.0
    """``time.perf_counter()`` when the POST began."""
    elapsed: float = 0.0


def signature(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    """The header value GitHub computes: ``sha256=`` and the hex HMAC of the raw body."""
    return f"{algorithm}=" + hmac.new(secret.encode(), body, algorithm).hexdigest()


def send(
    hook: Hook,
    event: str,
    payload: dict[str, Any],
    *,
    delivery_id: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Delivery:
    """POST ``payload`` to ``hook.url`` as GitHub does; ``headers`` override (attacks)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    delivery = Delivery(
        id=delivery_id or str(uuid.uuid4()),
        event=event,
        payload=payload,
        url=hook.url,
        secret=hook.secret,
        hook_id=hook.id,
    )
    sent = {
        "Accept": "*/*",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery.id,
        "X-GitHub-Hook-ID": str(hook.id),
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": str(payload.get("repository", {}).get("id", 0)),
    }
    if hook.secret is not None:
        sent["X-Hub-Signature"] = signature(hook.secret, body, "sha1")
        sent["X-Hub-Signature-256"] = signature(hook.secret, body)
    for name, value in (headers or {}).items():
        sent = {k: v for k, v in sent.items() if k.lower() != name.lower()}
        if value:
            sent[name] = value
    start = delivery.sent_at = time.perf_counter()
    try:
        answer = httpx.post(hook.url, content=body, headers=sent, timeout=timeout, verify=TLS)
        delivery.status, delivery.response = answer.status_code, answer.text[:2000]
    except httpx.HTTPError as exc:
        delivery.response = f"{type(exc).__name__}: {exc}"
    delivery.elapsed = time.perf_counter() - start
    return delivery
