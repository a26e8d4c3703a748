"""What backspace does for one trigger, after the webhook was answered: check who asked,
acknowledge with 👀, start the run (or the follow-up), and keep one status comment current.

A refusal of the orchestrator's door becomes a reply comment saying why. Nothing here raises:
the front end's tasks log what fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from backspace.githubbot.access import Access
from backspace.githubbot.api import GitHubApi
from backspace.githubbot.reporter import StatusComment
from backspace.githubbot.status import StatusView
from backspace.githubbot.triggers import Trigger
from backspace.orchestrator.errors import Reason
from backspace.orchestrator.sanitiser import sanitise
from backspace.orchestrator.service import Refusal, Service
from backspace.orchestrator.store import Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    web_host: str
    mention: str
    status_interval: float = 2.0


class Responder:
    def __init__(self, service: Service, api: GitHubApi, access: Access, options: Options) -> None:
        self.service = service
        self.api = api
        self.access = access
        self.options = options

    async def handle(self, trigger: Trigger) -> None:
        refusal = await self.access.refusal(trigger.repo, trigger.login, trigger.bot)
        if refusal is not None:
            log.info("GitHub: ignored a request on %s: %s", trigger.repo, refusal)
            return
        await self._react(trigger)
        try:
            run, note = await self._start(trigger)
        except Refusal as refusal_:
            await self._reply(trigger, self._refusal_text(refusal_))
            return
        if run is None:
            await self._reply(trigger, note)
            return
        view = StatusView(
            run_id=run.id,
            run_url=f"{self.service.public_url}/runs/{run.id}",
            login=trigger.login,
            request=trigger.request,
            web_host=self.options.web_host,
            note=note,
        )
        reporter = StatusComment(
            self.api, trigger.repo, trigger.number, view, interval=self.options.status_interval
        )
        await reporter.open()
        await reporter.follow(self.service.subscribe(run.id))

    async def _start(self, trigger: Trigger) -> tuple[Run | None, str]:
        """The run that carries the request and a note for the status comment; (None, reply)
        when there is nothing to continue. Raises the door's `Refusal`."""
        requester = f"@{trigger.login} on GitHub"
        meta = {"github_repo": trigger.repo, "github_number": trigger.number}
        if trigger.pr_url is not None:
            parent = await self.service.run_for_pull_request(trigger.pr_url)
            if parent is None:
                return None, (
                    "backspace only continues pull requests it opened. To start a new one, "
                    f"mention {self.options.mention} on an issue."
                )
            follow = await self.service.follow_up(
                parent.id, trigger.request, source="github", requester=requester,
                context=trigger.context, meta=meta,
            )  # fmt: skip
            return follow.run, follow.message
        run = await self.service.admit(
            trigger.repo, trigger.request, source="github", requester=requester,
            context=trigger.context, closes_issue=trigger.number, meta=meta,
        )  # fmt: skip
        return run, f"a new run for issue #{trigger.number}"

    async def _react(self, trigger: Trigger) -> None:
        try:
            await self.api.react(trigger.repo, trigger.react_to, trigger.number, "eyes")
        except Exception as exc:
            log.warning("GitHub: the 👀 reaction failed: %s", type(exc).__name__)

    async def _reply(self, trigger: Trigger, text: str) -> None:
        try:
            await self.api.comment(trigger.repo, trigger.number, f"@{trigger.login} {text}")
        except Exception as exc:
            log.warning("GitHub: the reply comment failed: %s", type(exc).__name__)

    def _refusal_text(self, refusal: Refusal) -> str:
        """The door's reason in words, inert (it may quote the request) and without secrets."""
        message = sanitise(
            self.service.redactor.text(refusal.message), keep_host=self.options.web_host
        )
        match refusal.reason:
            case Reason.PROMPT:
                return f"backspace did not start: your request {message}."
            case Reason.MODEL:
                return "backspace has no model configured yet: an operator has to set ANTHROPIC_API_KEY."
            case Reason.SHUTTING_DOWN:
                return f"backspace is restarting ({message}): mention it again in a minute."
        return f"backspace did not start: {message}"
