"""The GitHub front end: the webhook endpoint and the tasks that answer its triggers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from backspace.config import Settings
from backspace.githubbot.access import Access
from backspace.githubbot.api import GitHubApi
from backspace.githubbot.endpoint import Endpoint
from backspace.githubbot.responder import Options, Responder
from backspace.githubbot.triggers import Trigger, normalise_mention
from backspace.orchestrator.githosts.github_app import InstallationTokens
from backspace.orchestrator.service import Service
from backspace.tasks import Tasks


class GitHubFrontEnd:
    def __init__(self, service: Service, settings: Settings) -> None:
        secret = settings.github_webhook_secret
        token = settings.github_token.get_secret_value() if settings.github_token else ""
        app = getattr(service.hosts.get("github"), "app", None)  # the runs' GitHub App
        tokens = InstallationTokens(app) if app is not None else None
        self.api = GitHubApi(token, settings.github_api_url, tokens=tokens)
        self.access = Access(self.api.permission, self.api.own_login)
        self.tasks = Tasks("GitHub webhook")
        mention = normalise_mention(settings.github_mention)
        self.responder = Responder(
            service, self.api, self.access, Options(web_host=settings.github_host, mention=mention)
        )
        self._endpoint = Endpoint(
            secret.get_secret_value() if secret else "",
            service.store,
            self.dispatch,
            mention=mention,
            label=settings.github_trigger_label,
            problem=None
            if token or tokens
            else "GITHUB_TOKEN is not set (nor a GitHub App): backspace cannot react, comment "
            "or open pull requests on GitHub",
        )

    def dispatch(self, trigger: Trigger) -> None:
        self.tasks.spawn(self.responder.handle(trigger))

    async def endpoint(self, request: Request) -> Response:
        return await self._endpoint(request)

    async def start(self) -> None:
        """Nothing to connect: GitHub calls us."""

    async def aclose(self) -> None:
        await self.tasks.aclose()
        await self.api.aclose()
