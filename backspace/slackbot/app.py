"""slack-bolt's AsyncApp with backspace's listeners, served at /slack/events or over Socket Mode.

Every listener acks first (Slack wants an answer within 3 s) and does its network work after;
runs are followed by app-owned tasks. Bolt's signature check stays on; the allowlists of teams,
channels and users refuse politely; ALLOWED_REPOS applies through the shared repository check.
Event retries (same `event_id`) never start a second run. Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.response import BoltResponse
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import Response

from backspace.app import Services
from backspace.orchestrator.githosts.base import RepoRefError
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.runner import NotAccepting
from backspace.orchestrator.store import StoreFull
from backspace.slackbot import commands
from backspace.slackbot.messages import CANCEL_ACTION, RunView, escape, help_text, status_text
from backspace.slackbot.reporter import ChannelPacer, SlackReporter

log = logging.getLogger(__name__)

EVENT_TTL = 15 * 60  # longer than Slack's retry window
MAX_BODY = 512 * 1024


def listed(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


class SlackFrontEnd:
    def __init__(self, services: Services) -> None:
        settings = services.settings
        self.services = services
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
        self._secret = secret.encode()  # empty in Socket Mode: then no HTTP request is taken
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret or "socket-mode-only",
            # Bolt answers when a listener returns, not by polling every 10 ms for its ack:
            # our listeners only do local work and hand anything on the network to a task.
            process_before_response=True,
            raise_error_for_unhandled_request=False,
        )
        self.pacer = ChannelPacer(settings.slack_post_interval)
        self.teams = listed(settings.slack_allowed_teams)
        self.channels = listed(settings.slack_allowed_channels)
        self.users = listed(settings.slack_allowed_users)
        self.admins = listed(settings.slack_admin_users)
        self.tasks: set[asyncio.Task[None]] = set()
        self._seen_events: dict[str, float] = {}
        self._socket: Any = None
        self._register()
        logging.getLogger("slack_bolt").setLevel(logging.ERROR)  # some of its logs carry bodies

    # --- transport -------------------------------------------------------------------------------
    async def endpoint(self, request: Request) -> Response:
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
        if not self._signed(body, request.headers.get("x-slack-request-timestamp", ""),
                            request.headers.get("x-slack-signature", "")):  # fmt: skip
            return Response("invalid signature", status_code=401)
        try:
            bolt_request = to_async_bolt_request(request, body)
        except Exception as exc:  # not UTF-8, not JSON, nested too deeply, odd shapes
            log.warning("refused a malformed Slack request: %s", type(exc).__name__)
            return Response("malformed request", status_code=400)
        problem = _shape_problem(bolt_request.body)
        if problem is not None:
            log.warning("refused a malformed Slack request: %s", problem)
            return Response(f"malformed request: {problem}", status_code=400)
        text = body.decode("utf-8", errors="replace")
        if "payload" in text and not text.startswith("{") and bolt_request.body == {}:
            # Bolt 1.30 reads any form body containing the word "payload" as a button click, so
            # `/backspace fix the payload parser` would match nothing: parse it as a form.
            fields = dict(parse_qsl(text, keep_blank_values=True))
            if "payload" not in fields:
                bolt_request.body = fields
                bolt_request.context = build_async_context(AsyncBoltContext({}), fields)
        return to_starlette_response(await self.app.async_dispatch(bolt_request))

    def _signed(self, body: bytes, timestamp: str, signature: str) -> bool:
        """Slack's v0 signature over the raw bytes, from the last five minutes.

        Not slack_sdk's SignatureVerifier: it raises on a timestamp that is not a number and
        on a body that is not UTF-8, which must be a refusal here, not a 500.
        """
        if (
            not (timestamp.isascii() and timestamp.isdigit())
            or abs(time.time() - int(timestamp)) > 300
        ):
            return False
        base = b"v0:" + timestamp.encode() + b":" + body
        expected = "v0=" + hmac.new(self._secret, base, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.encode(errors="replace"))

    async def start(self) -> None:
        """Socket Mode, when SLACK_APP_TOKEN is set: connected in the background (it retries)."""
        settings = self.services.settings
        if not settings.slack_app_token:
            return
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        self._socket = AsyncSocketModeHandler(self.app, settings.slack_app_token.get_secret_value())
        self._spawn(self._socket.connect_async())

    async def aclose(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a Slack task failed")

        task = asyncio.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- listeners -------------------------------------------------------------------------------
    def _register(self) -> None:
        app = self.app
        app.middleware(self._allowlist)
        app.command(self.services.settings.slack_command)(self._command)
        app.command(re.compile(r".*"))(self._unknown_command)  # after ours: only the others
        app.event("app_mention")(self._on_mention)
        app.action(CANCEL_ACTION)(self._on_cancel)
        app.event("message")(self._ignore)

    async def _allowlist(
        self, context: Any, body: dict[str, Any], next: Callable[[], Awaitable[Any]]
    ) -> Any:
        refusal = self._refusal(context.team_id, context.channel_id, context.user_id)
        if refusal is None:
            return await next()
        log.info("refused a Slack request: %s", refusal)
        if body.get("type") == "event_callback":
            event = body.get("event") or {}
            if event.get("channel") and event.get("user"):
                self._spawn(self._ephemeral(event["channel"], event["user"], refusal))
            return BoltResponse(status=200, body="")
        return BoltResponse(status=200, body={"response_type": "ephemeral", "text": refusal})

    def _refusal(self, team: str | None, channel: str | None, user: str | None) -> str | None:
        if self.teams and team and team not in self.teams:
            return "Sorry, backspace is not enabled for this workspace."
        if self.channels and channel and channel not in self.channels:
            return "Sorry, backspace is not enabled in this channel. Ask an admin to add it."
        if self.users and user and user not in self.users and user not in self.admins:
            return "Sorry, you are not on the list of people who can use backspace. Ask an admin."
        return None

    async def _unknown_command(self, ack: Any, body: dict[str, Any]) -> None:
        command = self.services.settings.slack_command
        await ack(
            response_type="ephemeral",
            text=f"backspace answers {command} only (SLACK_COMMAND), not "
            f"`{escape(str(body.get('command', ''))[:40])}`: ask an admin to check the Slack app.",
        )

    async def _command(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        team, channel, user = (
            _text(body.get("team_id")),
            _text(body.get("channel_id")),
            _text(body.get("user_id")),
        )
        if not channel or not user:
            await ack(
                response_type="ephemeral",
                text="This command came without a channel or a user, so backspace cannot run it.",
            )
            return
        reply = self._handle(_text(body.get("text")), team, channel, user)
        if isinstance(reply, str):  # it may quote what was sent: never a secret we know
            await ack(response_type="ephemeral", text=self.services.redactor.text(reply))
            return
        view, request = reply
        try:
            run = self.services.runner.submit(request)
        except StoreFull as exc:
            await ack(response_type="ephemeral", text=f"backspace cannot take runs now: {exc}")
            return
        except NotAccepting as exc:
            await ack(
                response_type="ephemeral",
                text=f"backspace is restarting ({exc}); try again in a minute.",
            )
            return
        view.run_id, view.run_url = run.id, f"{self.services.public_url}/api/runs/{run.id}"
        await ack(
            response_type="ephemeral",
            text=f"Started run {run.id[:8]} on `{escape(view.repo)}`; progress will appear in this channel.",
        )
        self._spawn(self._report(view, channel, None, respond))

    async def _on_mention(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        self._spawn(self._mention(body, event, client))  # Bolt has already acked the event

    async def _on_cancel(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        self._spawn(self._cancel(body, respond))

    async def _mention(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        if self._duplicate(str(body.get("event_id", ""))):
            return
        team = _text(body.get("team_id"))
        channel, user, ts = (
            _text(event.get("channel")),
            _text(event.get("user")),
            _text(event.get("ts")),
        )
        thread = _text(event.get("thread_ts")) or ts
        if not channel or not user:
            log.info("ignored a mention without a channel or a user")
            return
        reply = self._handle(_text(event.get("text")), team, channel, user)
        if isinstance(reply, str):
            text = self.services.redactor.text(reply)
            await self._safe(client.chat_postMessage(channel=channel, thread_ts=thread, text=text))
            return
        view, request = reply
        try:
            run = self.services.runner.submit(request)
        except StoreFull as exc:
            text = f"backspace cannot take runs now: {exc}"
            await self._safe(client.chat_postMessage(channel=channel, thread_ts=thread, text=text))
            return
        except NotAccepting as exc:
            await self._safe(
                client.chat_postMessage(
                    channel=channel, thread_ts=thread, text=f"backspace is restarting ({exc})."
                )
            )
            return
        view.run_id, view.run_url = run.id, f"{self.services.public_url}/api/runs/{run.id}"
        await self._safe(client.reactions_add(channel=channel, timestamp=ts, name="eyes"))
        self._spawn(self._report(view, channel, thread, None))

    async def _cancel(self, body: dict[str, Any], respond: Any) -> None:
        actions = body.get("actions") or [{}]
        run_id = _text(actions[0].get("value"))
        who = body.get("user")
        user = _text(who.get("id")) if isinstance(who, dict) else ""
        run = self.services.store.get_run(run_id)
        if run is None:
            await respond(
                response_type="ephemeral", replace_original=False, text="I do not know that run."
            )
            return
        owner = run.meta.get("slack_user")
        if user != owner and user not in self.admins:
            await respond(
                response_type="ephemeral",
                replace_original=False,
                text=f"Only <@{owner}>, who started this run, or an admin can cancel it.",
            )
            return
        cancelled = await self.services.runner.cancel(run_id)
        text = "Cancelling the run…" if cancelled else f"The run already ended ({run.status})."
        await respond(response_type="ephemeral", replace_original=False, text=text)

    async def _ignore(self) -> None:
        """Plain channel messages are not for us (mentions arrive as app_mention)."""

    # --- shared ----------------------------------------------------------------------------------
    def _handle(
        self, text: str, team: str, channel: str, user: str
    ) -> str | tuple[RunView, RunRequest]:
        """A reply for the person, or the run to start. No network: this runs before the ack."""
        services, store = self.services, self.services.store
        command = self.services.settings.slack_command
        parsed = commands.parse(text, services.parse_repo, store.channel_repo(team, channel))
        match parsed:
            case commands.Help():
                return help_text(command)
            case commands.Status():
                return status_text(
                    store.runs_with_meta("slack_channel", channel), services.public_url
                )
            case commands.Invalid(reason):
                return f"{escape(reason)}\nTry `{command} help`."
            case commands.SetRepo(reference):
                try:
                    ref = services.parse_repo(reference)
                except RepoRefError as exc:
                    return f"{escape(str(exc))}\nTry `{command} help`."
                store.set_channel_repo(
                    team, channel, ref.name if ref.host == "github" else reference, user
                )
                return f"This channel's default repository is now `{escape(ref.name)}`. Try `{command} <what to change>`."
            case commands.StartRun(repo, repo_text, prompt):
                try:
                    services.check_prompt(prompt)
                except ValueError as exc:
                    return f"Your request {escape(str(exc))}."
                usable, message = services.hosts[repo.host].check()
                if not usable:
                    return f"I cannot use `{escape(repo.name)}` right now: {escape(message)}"
                if not services.settings.model_configured:
                    return "backspace has no model configured yet: an operator has to set ANTHROPIC_API_KEY."
                sandbox_ok, sandbox_message = services.sandboxes.check()
                if not sandbox_ok:
                    return f"backspace cannot start sandboxes right now: {escape(sandbox_message)}"
                meta = {"slack_team": team, "slack_channel": channel, "slack_user": user}
                request = RunRequest(
                    repo_url=repo_text,
                    repo=repo,
                    prompt=prompt,
                    source="slack",
                    requester=f"<@{user}> in Slack",
                    meta=meta,
                )
                return RunView(
                    run_id="",
                    run_url="",
                    user=user,
                    repo=repo.name,
                    prompt=services.redactor.text(prompt),
                ), request

    async def _report(self, view: RunView, channel: str, thread: str | None, respond: Any) -> None:
        reporter = SlackReporter(
            self.client, self.pacer, view, channel=channel, thread_ts=thread,
            status_interval=self.services.settings.slack_status_interval,
        )  # fmt: skip
        error = await reporter.open()
        if error in ("not_in_channel", "channel_not_found") and respond is not None:
            await self._safe(
                respond(
                    response_type="ephemeral",
                    text=f"I am not in this channel, so I cannot post progress here: invite me with "
                    f"`/invite @backspace`. The run goes on: {view.run_url}",
                )
            )
        await reporter.follow(self.services.hub.subscribe(view.run_id))

    async def _ephemeral(self, channel: str, user: str, text: str) -> None:
        await self._safe(self.client.chat_postEphemeral(channel=channel, user=user, text=text))

    async def _safe(self, call: Awaitable[Any]) -> None:
        try:
            await call
        except Exception as exc:
            log.warning("a Slack call failed: %s", type(exc).__name__)

    def _duplicate(self, event_id: str) -> bool:
        """Slack retries events it thinks we missed; one event starts at most one run."""
        now = time.monotonic()
        for seen, at in list(self._seen_events.items()):
            if now - at > EVENT_TTL:
                del self._seen_events[seen]
        if not event_id:
            return False
        if event_id in self._seen_events:
            return True
        self._seen_events[event_id] = now
        return False


def _text(value: Any) -> str:
    """A field Slack sends as a string; anything else (missing, an object) is empty."""
    return value if isinstance(value, str) else ""


def _shape_problem(body: Any) -> str | None:
    """What Bolt's listeners and middleware cannot handle (they would fail with a 500), or None."""
    if not isinstance(body, dict):
        return "the body is not an object"
    if (body.get("type") == "event_callback" or "event" in body) and not isinstance(
        body.get("event"), dict
    ):
        return "an event callback without an event object"
    if body.get("type") == "block_actions" or "actions" in body:
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            return "a block_actions payload without actions"
        if not all(isinstance(a, dict) for a in actions):
            return "an action that is not an object"
    return None
