"""Socket Mode's envelope handler: Bolt's, but every envelope is acked.

Bolt's own handler acks only what a listener answered with a 200; an envelope nobody listens to
(an event the app was subscribed to by someone else, another app's button) or one of an odd shape
would go unacked, and Slack delivers an unacked event again and again. Odd shapes are dropped
here before Bolt sees them, as /slack/events refuses them in HTTP mode.
"""

from __future__ import annotations

import logging
import time

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.response import BoltResponse
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest

from backspace.slackbot.bolt import shape_problem

log = logging.getLogger(__name__)


class SocketHandler(AsyncSocketModeHandler):
    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        started = time.time()
        problem = shape_problem(req.payload)
        if problem is not None:
            log.warning("dropped a malformed Socket Mode envelope (%s): %s", req.type, problem)
            response = BoltResponse(status=200, body="")
        else:
            response = await run_async_bolt_app(self.app, req)
            if response.status != 200:  # nobody listens (404): acked, so Slack stops resending
                log.info("acked a Socket Mode envelope no listener took (%s)", req.type)
                response = BoltResponse(status=200, body="")
        await send_async_response(client, req, response, started)
