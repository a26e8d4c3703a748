"""``POST /github/webhook``: the body read within a limit, the signature checked, the delivery
read and claimed once, then answered at once; the work goes to the front end's tasks.

Nothing of an unsigned body is parsed, and request bodies are never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backspace.githubbot.signature import signed
from backspace.githubbot.triggers import Trigger, parse
from backspace.orchestrator.store import RunStore

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
"""Bytes: a comment is at most 65536 characters; GitHub's payload around it is a few KB."""


class Endpoint:
    def __init__(
        self,
        secret: str,
        store: RunStore,
        dispatch: Callable[[Trigger], None],
        *,
        mention: str,
        label: str,
        problem: str | None = None,
    ) -> None:
        self._secret = secret.encode()
        self.store = store
        self.dispatch = dispatch
        self.mention = mention
        self.label = label
        self.problem = problem
        """Why the webhook cannot act (e.g. no GITHUB_TOKEN): answered 503 after the signature."""

    async def __call__(self, request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return Response("request body too large", status_code=413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # a chunked body has no content-length to check
            size += len(chunk)
            if size > MAX_BODY:
                return Response("request body too large", status_code=413)
            chunks.append(chunk)
        body = b"".join(chunks)
        if not signed(self._secret, body, request.headers.get("x-hub-signature-256", "")):
            return Response(
                "invalid or missing X-Hub-Signature-256: the webhook's secret must be "
                "GITHUB_WEBHOOK_SECRET",
                status_code=401,
            )
        if self.problem is not None:
            return Response(self.problem, status_code=503)
        delivery = request.headers.get("x-github-delivery", "").strip()
        event = request.headers.get("x-github-event", "").strip()
        if not delivery or len(delivery) > 100 or not event:
            return Response(
                "X-GitHub-Delivery and X-GitHub-Event are required, as GitHub sends them",
                status_code=400,
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return Response(
                "the body is not JSON: set the webhook's content type to application/json",
                status_code=400,
            )
        found = parse(event, payload, self.mention, self.label)
        if isinstance(found, str):
            return JSONResponse({"ignored": found})
        if not await self.store.claim_delivery("github", delivery):
            log.info("GitHub: delivery %s was already handled", delivery[:40])
            return JSONResponse({"ignored": "this delivery was already handled"})
        self.dispatch(found)
        return JSONResponse({"accepted": f"{event} by @{found.login}"}, status_code=202)
