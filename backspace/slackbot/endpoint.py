"""/slack/events in HTTP mode: the body read within a limit, the signature checked, then Bolt.

Request bodies are never logged.
"""

from __future__ import annotations

import logging

from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
from slack_bolt.async_app import AsyncApp
from starlette.requests import Request
from starlette.responses import Response

from backspace.slackbot.bolt import reparse_form, shape_problem
from backspace.slackbot.signature import signed

log = logging.getLogger(__name__)

MAX_BODY = 512 * 1024


class Endpoint:
    def __init__(self, app: AsyncApp, secret: str) -> None:
        self.app = app
        self._secret = secret.encode()  # empty in Socket Mode: then no HTTP request is taken

    async def __call__(self, request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if not self._secret:  # Bolt's placeholder secret is public: never verify with it
            return Response(
                "Slack runs in Socket Mode here (no SLACK_SIGNING_SECRET): HTTP requests are "
                "not accepted",
                status_code=404,
            )
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
        # The signature first: nothing of an unsigned body is parsed (Bolt checks it again).
        if not signed(self._secret, body, request.headers.get("x-slack-request-timestamp", ""),
                      request.headers.get("x-slack-signature", "")):  # fmt: skip
            return Response("invalid signature", status_code=401)
        try:
            bolt_request = to_async_bolt_request(request, body)
        except Exception as exc:  # not UTF-8, not JSON, nested too deeply, odd shapes
            log.warning("refused a malformed Slack request: %s", type(exc).__name__)
            return Response("malformed request", status_code=400)
        problem = shape_problem(bolt_request.body)
        if problem is not None:
            log.warning("refused a malformed Slack request: %s", problem)
            return Response(f"malformed request: {problem}", status_code=400)
        reparse_form(bolt_request, body.decode("utf-8", errors="replace"))
        return to_starlette_response(await self.app.async_dispatch(bolt_request))
