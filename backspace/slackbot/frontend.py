"""The Slack front end: slack-bolt's AsyncApp with backspace's listeners, served at
/slack/events (HTTP mode, `endpoint`) or over Socket Mode (`start`).

Bolt's signature check stays on, and ours runs before it (backspace/slackbot/endpoint.py). Runs
are followed by tasks the front end owns (backspace/slackbot/tasks.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import Response

from backspace.config import Settings
from backspace.orchestrator.service import Service
from backspace.slackbot.endpoint import Endpoint
from backspace.slackbot.listeners import Listeners
from backspace.slackbot.reporter import ApiErrorHook
from backspace.tasks import Tasks


class SlackFrontEnd:
    def __init__(
        self, service: Service, settings: Settings, on_api_error: ApiErrorHook | None = None
    ) -> None:
        self.settings = settings
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
        secret = (
            settings.slack_signing_secret.get_secret_value()
            if settings.slack_signing_secret
            else ""
        )
        self.client = AsyncWebClient(
            token=token,
            base_url=settings.slack_api_url,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
                AsyncServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret or "socket-mode-only",
            # Bolt answers when a listener returns, not by polling every 10 ms for its ack:
            # our listeners only do local work and hand anything on the network to a task.
            process_before_response=True,
            raise_error_for_unhandled_request=False,
        )
        self.tasks = Tasks("Slack")
        Listeners(service, settings, self.client, self.tasks, on_api_error).register(self.app)
        self._endpoint = Endpoint(self.app, secret)
        self._socket: Any = None
        logging.getLogger("slack_bolt").setLevel(logging.ERROR)  # some of its logs carry bodies

    async def endpoint(self, request: Request) -> Response:
        """One request to /slack/events (HTTP mode)."""
        return await self._endpoint(request)

    async def start(self) -> None:
        """Socket Mode, when SLACK_APP_TOKEN is set: connected in the background (it retries)."""
        if not self.settings.slack_app_token:
            return
        # Only a server in Socket Mode imports its client.
        from backspace.slackbot.socket import SocketHandler

        token = self.settings.slack_app_token.get_secret_value()
        self._socket = SocketHandler(self.app, token)
        self.tasks.spawn(self._socket.connect_async())

    async def aclose(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
        await self.tasks.aclose()
