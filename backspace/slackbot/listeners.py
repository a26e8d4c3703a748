"""What backspace does with each Slack request: the listeners registered on Bolt's AsyncApp.

Every listener acks first (Slack wants an answer within 3 s) and does its network work after,
in the front end's tasks. The allowlists of teams, channels and users refuse politely; a run
starts through the orchestrator's door (`Service.admit`), whose refusals are worded here for
Slack and shown only to the asker.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from backspace.config import Settings
from backspace.orchestrator.githosts.base import RepoRefError
from backspace.orchestrator.service import FollowUp, Refusal, Service
from backspace.orchestrator.store import Run
from backspace.slackbot import commands
from backspace.slackbot.allowlist import Allowlist
from backspace.slackbot.messages import (
    CANCEL_ACTION,
    RunView,
    escape,
    help_text,
    refusal_text,
    status_text,
)
from backspace.slackbot.reporter import ApiErrorHook, ChannelPacer, SlackReporter
from backspace.slackbot.tasks import safe
from backspace.tasks import Tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Where:
    """Who asked, and where."""

    team: str
    channel: str
    user: str
    thread: str = ""  # a mention's thread (its own ts when it starts one)


class Listeners:
    def __init__(
        self,
        service: Service,
        settings: Settings,
        client: AsyncWebClient,
        tasks: Tasks,
        on_api_error: ApiErrorHook | None = None,
    ) -> None:
        self.on_api_error = on_api_error  # telemetry: (method, error) of a failed Slack call
        self.service = service
        self.settings = settings
        self.client = client
        self.tasks = tasks
        self.command = settings.slack_command
        self.allowlist = Allowlist.from_settings(settings)
        self.pacer = ChannelPacer(settings.slack_post_interval)

    def register(self, app: AsyncApp) -> None:
        app.middleware(self._allowlist)
        app.command(self.command)(self._command)
        app.command(re.compile(r".*"))(self._unknown_command)  # after ours: only the others
        app.event("app_mention")(self._on_mention)
        app.action(CANCEL_ACTION)(self._on_cancel)
        app.event("message")(self._ignore)

    # --- listeners -------------------------------------------------------------------------------
    async def _allowlist(
        self, context: Any, body: dict[str, Any], next: Callable[[], Awaitable[Any]]
    ) -> Any:
        refusal = self.allowlist.refusal(context.team_id, context.channel_id, context.user_id)
        if refusal is None:
            return await next()
        log.info("refused a Slack request: %s", refusal)
        if body.get("type") == "event_callback":
            event = body.get("event") or {}
            if event.get("channel") and event.get("user"):
                self.tasks.spawn(self._ephemeral(event["channel"], event["user"], refusal))
            return BoltResponse(status=200, body="")
        return BoltResponse(status=200, body={"response_type": "ephemeral", "text": refusal})

    async def _unknown_command(self, ack: Any, body: dict[str, Any]) -> None:
        await ack(
            response_type="ephemeral",
            text=f"backspace answers {self.command} only (SLACK_COMMAND), not "
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
        reply = await self._handle(_text(body.get("text")), Where(team, channel, user))
        if isinstance(reply, Refusal):
            reply = refusal_text(reply, self.command)
        if isinstance(reply, str):  # it may quote what was sent: never a secret we know
            await ack(response_type="ephemeral", text=self.service.redactor.text(reply))
            return
        view = reply
        await ack(
            response_type="ephemeral",
            text=f"Started run {view.run_id[:8]} on `{escape(view.repo)}`; progress will appear in this channel.",
        )
        self.tasks.spawn(self._report(view, channel, None, respond))

    async def _on_mention(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        self.tasks.spawn(self._mention(body, event, client))  # Bolt has already acked the event

    async def _on_cancel(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        self.tasks.spawn(self._cancel(body, respond))

    async def _mention(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        event_id = _text(body.get("event_id"))
        # Slack re-sends an event it thinks was missed: it starts at most one run, across
        # restarts too (the store remembers it).
        if event_id and not await self.service.store.claim_delivery("slack", event_id):
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
        where = Where(team, channel, user)
        parent = await self._thread_run(team, channel, _text(event.get("thread_ts")))
        request = commands.follow_up(_text(event.get("text")))
        if parent is not None and request is not None:
            await self._follow_up(parent, request, where, ts, thread, client)
            return
        reply = await self._handle(_text(event.get("text")), Where(team, channel, user, thread))
        if isinstance(reply, Refusal):
            reply = refusal_text(reply, self.command, in_thread=True)
        if isinstance(reply, str):
            text = self.service.redactor.text(reply)
            await safe(client.chat_postMessage(channel=channel, thread_ts=thread, text=text))
            return
        await safe(client.reactions_add(channel=channel, timestamp=ts, name="eyes"))
        self.tasks.spawn(self._report(reply, channel, thread, None))

    async def _cancel(self, body: dict[str, Any], respond: Any) -> None:
        actions = body.get("actions") or [{}]
        run_id = _text(actions[0].get("value"))
        who = body.get("user")
        user = _text(who.get("id")) if isinstance(who, dict) else ""
        run = await self.service.get_run(run_id)
        if run is None:
            await respond(
                response_type="ephemeral", replace_original=False, text="I do not know that run."
            )
            return
        owner = run.meta.get("slack_user")
        if user != owner and user not in self.allowlist.admins:
            await respond(
                response_type="ephemeral",
                replace_original=False,
                text=f"Only <@{owner}>, who started this run, or an admin can cancel it.",
            )
            return
        cancelled = await self.service.cancel(run_id)
        text = "Cancelling the run…" if cancelled else f"The run already ended ({run.status})."
        await respond(response_type="ephemeral", replace_original=False, text=text)

    async def _ignore(self) -> None:
        """Plain channel messages are not for us (mentions arrive as app_mention)."""

    # --- a request, answered ---------------------------------------------------------------------
    async def _handle(self, text: str, where: Where) -> str | Refusal | RunView:
        """A reply for the person, a refusal, or the run started. Only the store is asked:
        this runs before the ack."""
        service, store, command = self.service, self.service.store, self.command
        team, channel, user = where.team, where.channel, where.user
        parsed = commands.parse(text, service.parse_repo, await store.channel_repo(team, channel))
        match parsed:
            case commands.Help():
                return help_text(command)
            case commands.Status():
                return status_text(
                    await store.runs_with_meta("slack_channel", channel), service.public_url
                )
            case commands.Invalid(reason):
                return f"{escape(reason)}\nTry `{command} help`."
            case commands.SetRepo(reference):
                try:
                    ref = service.parse_repo(reference)
                except RepoRefError as exc:
                    return f"{escape(str(exc))}\nTry `{command} help`."
                await store.set_channel_repo(
                    team, channel, ref.name if ref.host == "github" else reference, user
                )
                return f"This channel's default repository is now `{escape(ref.name)}`. Try `{command} <what to change>`."
            case commands.StartRun(repo, repo_text, prompt, engine):
                try:
                    run = await service.admit(
                        repo_text,
                        prompt,
                        engine=engine,
                        source="slack",
                        requester=f"<@{user}> in Slack",
                        meta={
                            "slack_team": team,
                            "slack_channel": channel,
                            "slack_user": user,
                            **({"slack_thread": where.thread} if where.thread else {}),
                        },
                    )
                except Refusal as refusal:
                    return refusal
                return self._view(run, user, repo.name, prompt)

    def _view(self, run: Run, user: str, repo: str, prompt: str) -> RunView:
        return RunView(
            run_id=run.id,
            run_url=self.service.run_url(run.id),
            user=user,
            repo=repo,
            prompt=self.service.redactor.text(prompt),
            parent_id=run.parent_id,
        )

    # --- follow-ups in a run's thread ------------------------------------------------------------
    async def _thread_run(self, team: str, channel: str, thread: str) -> Run | None:
        """The newest run reported in this thread of this channel (a thread ts is unique only
        within its channel), or None: then a mention there is a new request."""
        if not thread:
            return None
        for run in await self.service.store.runs_with_meta("slack_thread", thread, limit=20):
            if run.meta.get("slack_channel") == channel and run.meta.get("slack_team") == team:
                return run
        return None

    async def _follow_up(
        self,
        parent: Run,
        request: commands.FollowUpRequest,
        where: Where,
        ts: str,
        thread: str,
        client: AsyncWebClient,
    ) -> None:
        """Continue the thread's run family: a queued run reported in the same thread, or the
        words steered into the running run."""
        try:
            result: FollowUp = await self.service.follow_up(
                parent.id,
                request.prompt,
                mode=request.mode,
                source="slack",
                requester=f"<@{where.user}> in Slack",
                meta={
                    "slack_team": where.team,
                    "slack_channel": where.channel,
                    "slack_user": where.user,
                    "slack_thread": thread,
                },
            )
        except Refusal as refusal:
            text = self.service.redactor.text(refusal_text(refusal, self.command, in_thread=True))
            await safe(client.chat_postMessage(channel=where.channel, thread_ts=thread, text=text))
            return
        await safe(client.reactions_add(channel=where.channel, timestamp=ts, name="eyes"))
        run = result.run
        if result.steered:
            text = f"Delivered to run {run.id[:8]}, which is working: its agent reads it at its next turn."
            await safe(client.chat_postMessage(channel=where.channel, thread_ts=thread, text=text))
            return
        try:
            repo = self.service.parse_repo(parent.repo_url).name
        except RepoRefError:
            repo = parent.repo_url
        view = self._view(run, where.user, repo, request.prompt)
        view.message = result.message[:1].upper() + result.message[1:]
        self.tasks.spawn(self._report(view, where.channel, thread, None))

    async def _report(self, view: RunView, channel: str, thread: str | None, respond: Any) -> None:
        reporter = SlackReporter(
            self.client, self.pacer, view, channel=channel, thread_ts=thread,
            status_interval=self.settings.slack_status_interval, on_error=self.on_api_error,
        )  # fmt: skip
        error = await reporter.open()
        if thread is None and reporter.status_ts is not None:
            await self._remember_thread(view.run_id, reporter.status_ts)
        if error in ("not_in_channel", "channel_not_found") and respond is not None:
            await safe(
                respond(
                    response_type="ephemeral",
                    text=f"I am not in this channel, so I cannot post progress here: invite me with "
                    f"`/invite @backspace`. The run goes on: {view.run_url}",
                )
            )
        await reporter.follow(self.service.subscribe(view.run_id))

    async def _remember_thread(self, run_id: str, thread: str) -> None:
        """A slash command's run is reported in its status message's thread: a mention there
        is a follow-up."""
        await self.service.store.set_meta(run_id, slack_thread=thread)

    async def _ephemeral(self, channel: str, user: str, text: str) -> None:
        await safe(self.client.chat_postEphemeral(channel=channel, user=user, text=text))


def _text(value: Any) -> str:
    """A field Slack sends as a string; anything else (missing, an object) is empty."""
    return value if isinstance(value, str) else ""
