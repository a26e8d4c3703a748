"""backspace as a GitHub App: a JWT from PyGithub, and installation tokens minted per use.

Why an App: its work appears as `<slug>[bot]`, an organisation picks the repositories it may
touch, and its tokens die within the hour. backspace goes further: each run gets a token of its
own, limited to the run's one repository and to the permissions a run needs
(`RUN_PERMISSIONS`), revoked when the run ends. A person who wins the agent's sandbox could not
see the token anyway (it stays in the host's git environment and API clients); if it ever leaked
from the host, it would reach one repository, for the length of one run at most.

- The JWT is signed by PyGithub (`github.Auth.AppAuth`, its default 60 s of clock slack and
  5 minute lifetime): no JWT code here. PyGithub's `get_access_token` cannot ask for a
  repository, so the App's few calls go through one `httpx.AsyncClient` with that JWT, on the
  event loop (a run's extra cost is a few milliseconds: bench/github_app.py).
- Every GitHub answer a person can act on becomes a `GitHostError` that says what to do: the
  App not installed on the repository (with the link to install it), a permission the
  installation lacks (named), a key that is not the App's, a clock GitHub does not believe.
- `InstallationTokens` serves the webhook front end: one token per repository with its smaller
  permissions, kept until a few minutes before it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import httpx

from backspace.orchestrator.errors import GitHostError
from backspace.orchestrator.redact import Redactor

log = logging.getLogger(__name__)

RUN_PERMISSIONS: dict[str, str] = {
    "contents": "write",  # fetch the base, push the branch
    "pull_requests": "write",  # open and update the pull request
    "issues": "write",  # a follow-up's comment on the pull request (an issue comment)
    "metadata": "read",  # read the repository (GitHub grants it to every token anyway)
}
"""What one run's token may do, and nothing more."""

FRONT_END_PERMISSIONS: dict[str, str] = {
    "issues": "write",  # reactions and status comments
    "pull_requests": "read",  # a review comment's reaction, a pull request's comments
    "metadata": "read",  # collaborators' permissions (who may ask)
}
"""What the webhook front end's tokens may do: it never pushes nor opens a pull request."""

LEVELS = {"read": 1, "write": 2, "admin": 3}
REFRESH_BEFORE = 300.0
"""A cached front-end token is replaced this many seconds before GitHub expires it."""


@dataclass(frozen=True)
class InstallationToken:
    """A token GitHub minted for one installation; `value` is the secret."""

    value: str = field(repr=False)
    repository: str
    permissions: dict[str, str]
    expires_at: float  # epoch seconds


@dataclass
class AppStatus:
    """What /health and `doctor` say of the App: the last answer GitHub gave to its JWT."""

    ok: bool | None = None  # None: not asked yet
    message: str = "not checked yet"
    checked_at: float = 0.0


class GitHubApp:
    def __init__(
        self,
        *,
        app_id: int,
        private_key: str,
        api_url: str,
        web_host: str,
        redactor: Redactor,
        timeout: float = 15.0,
    ) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from github import Auth  # imported when an App is configured, not by every server

        # Loaded once: given the PEM text, PyJWT loads (and so validates) the RSA key at every
        # signature, 70 ms each (bench/github_app.py); PyGithub signs with the loaded key.
        key = load_pem_private_key(private_key.encode(), password=None)
        self.app_id = app_id
        self.api_url = api_url.rstrip("/")
        self.web_host = web_host
        self.redactor = redactor
        self.timeout = timeout
        self._auth = Auth.AppAuth(app_id, cast("Callable[[], str]", lambda: key))
        self._client: httpx.AsyncClient | None = None
        self._app: dict[str, Any] | None = None
        self._bot: tuple[str, str] | None = None
        self.status = AppStatus()

    # --- the App ------------------------------------------------------------------------------
    def jwt(self) -> str:
        """A fresh JWT, signed by PyGithub with the App's key."""
        return self._auth.token

    async def app(self) -> dict[str, Any]:
        """`GET /app`, once: the App's id, slug and name (and proof that the JWT works)."""
        if self._app is None:
            self._app = await self._jwt_call("GET", "/app", "authenticate as the App")
        return self._app

    async def slug(self) -> str:
        return str((await self.app()).get("slug") or "backspace")

    async def probe(self) -> tuple[bool, str]:
        """`GET /app` now, for `backspace doctor` and the start-up check: can the App sign in?"""
        try:
            self._app = await self._jwt_call("GET", "/app", "authenticate as the App")
        except GitHostError as exc:
            return False, exc.message
        return True, self.status.message

    async def bot_identity(self) -> tuple[str, str]:
        """The App's bot user as a commit author: `slug[bot]`, `ID+slug[bot]@users.noreply...`
        (the address GitHub links to the bot; the id comes from `GET /users/slug[bot]`)."""
        if self._bot is None:
            login = f"{await self.slug()}[bot]"
            what = f"look up the App's user {login}"
            try:
                user = await self._request("GET", f"/users/{login}", what, jwt=False)
            except _Refused as exc:
                raise self._error(exc, what, jwt=False) from None
            host = "users.noreply.github.com"
            if self.web_host != "github.com":
                host = f"users.noreply.{self.web_host}"
            self._bot = (login, f"{user['id']}+{login}@{host}")
        return self._bot

    # --- installation tokens ------------------------------------------------------------------
    async def mint(self, repository: str, permissions: dict[str, str]) -> InstallationToken:
        """A token for the App's installation on `repository`, limited to it and `permissions`."""
        owner, name = repository.split("/", 1)
        what = f"find the App's installation on {repository}"
        try:
            installation = await self._jwt_call(
                "GET", f"/repos/{owner}/{name}/installation", what, missing_ok=True
            )
        except _Refused as exc:
            if exc.status == 404:
                raise await self._not_installed(repository) from None
            raise self._error(exc, what, jwt=True) from None
        missing = _missing(installation.get("permissions") or {}, permissions)
        if missing:
            raise await self._lacks(repository, missing)
        what = f"create a token for {repository}"
        try:
            answer = await self._jwt_call(
                "POST",
                f"/app/installations/{installation['id']}/access_tokens",
                what,
                json={"repositories": [name], "permissions": permissions},
                missing_ok=True,
            )
        except _Refused as exc:
            if exc.status == 422:  # a permission or the repository was taken away meanwhile
                raise GitHostError(
                    "github_app_permission",
                    f"GitHub refused a token for {repository} with {_describe(permissions)} "
                    f"({exc.message}): check the App's permissions and its installation",
                ) from None
            raise self._error(exc, what, jwt=True) from None
        token = str(answer["token"])
        self.redactor.add(token)
        return InstallationToken(
            value=token,
            repository=repository,
            permissions=dict(answer.get("permissions") or permissions),
            expires_at=_epoch(answer.get("expires_at")),
        )

    async def revoke(self, token: InstallationToken) -> None:
        """`DELETE /installation/token`: the token is dead at once, whatever it was used for.
        A failure is logged, not raised: the token expires within the hour anyway."""
        try:
            await self._request(
                "DELETE", "/installation/token", f"revoke the token for {token.repository}",
                jwt=False, token=token.value,
            )  # fmt: skip
        except _Refused as exc:
            log.warning("could not revoke the App token of a run: %s %s", exc.status, exc.message)
        except GitHostError as exc:
            log.warning("could not revoke the App token of a run: %s", exc.message)
        except Exception as exc:  # never let cleanup fail a run
            log.warning("could not revoke the App token of a run: %s", type(exc).__name__)
        finally:
            self.redactor.discard(token.value)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- errors a person can act on -------------------------------------------------------------
    async def _not_installed(self, repository: str) -> GitHostError:
        slug = await self.slug()
        owner = repository.split("/", 1)[0]
        return GitHostError(
            "github_app_not_installed",
            f"install {slug} on {repository}: <https://{self.web_host}/apps/{slug}/installations/new> "
            f"(the App is not installed on {owner}, or its installation does not include "
            f"{repository})",
        )

    async def _lacks(self, repository: str, missing: list[tuple[str, str, str]]) -> GitHostError:
        slug = await self.slug()
        what = ", ".join(
            f"{name}: {wanted}" + (f" (it has {has})" if has != "none" else "")
            for name, wanted, has in missing
        )
        return GitHostError(
            "github_app_permission",
            f"the {slug} App's installation on {repository} lacks the permission {what}: add it "
            f"in the App's settings (Permissions & events), then accept the new permissions on "
            f"the installation's page",
        )

    def _jwt_error(self, status: int, message: str, what: str) -> GitHostError:
        lowered = message.lower()
        if "'iat'" in lowered or "'exp'" in lowered or "issued at" in lowered or "expir" in lowered:
            return GitHostError(
                "github_app_clock",
                f"GitHub rejected the App's token as issued in the future or already expired "
                f"({message}): check this server's clock (run NTP; it must be within a minute "
                f"of GitHub's)",
            )
        if "integration not found" in lowered:
            return GitHostError(
                "github_app_bad_key",
                f"GitHub knows no App with GITHUB_APP_ID={self.app_id} ({message}): set the "
                f"App's id from its settings page",
            )
        return GitHostError(
            "github_app_bad_key",
            f"GitHub could not verify the App's JWT ({status}: {message}): GITHUB_APP_PRIVATE_KEY "
            f"is not a key of the App GITHUB_APP_ID={self.app_id}; generate a private key in the "
            f"App's settings and set it",
        )

    # --- HTTP -------------------------------------------------------------------------------------
    async def _jwt_call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: dict[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        """A call as the App; `missing_ok`: a 404 or 422 is the caller's to explain (raised
        as `_Refused`), any other refusal becomes a GitHostError here."""
        try:
            answer = await self._request(method, path, what, jwt=True, json=json)
        except _Refused as exc:
            if missing_ok and exc.status in (404, 422):
                raise
            error = self._error(exc, what, jwt=True)
            if exc.status == 401:
                self.status = AppStatus(False, error.message, time.time())
            raise error from None
        if path == "/app":
            self._app = answer
        name = (self._app or {}).get("slug") or "the App"
        self.status = AppStatus(True, f"{name} (id {self.app_id}) authenticates", time.time())
        return answer

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        jwt: bool,
        token: str | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "backspace",
        }
        if jwt:
            headers["Authorization"] = f"Bearer {self.jwt()}"
        elif token:
            headers["Authorization"] = f"token {token}"
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        try:
            response = await self._client.request(
                method, self.api_url + path, headers=headers, json=json
            )
        except httpx.HTTPError as exc:
            raise GitHostError(
                "github_unreachable",
                f"could not reach GitHub at {self.api_url} to {what} ({type(exc).__name__})",
                retryable=True,
            ) from None
        if response.status_code < 300:
            return response.json() if response.content else {}
        raise _Refused(response.status_code, self.redactor.text(_message(response)))

    def _error(self, refused: _Refused, what: str, *, jwt: bool) -> GitHostError:
        """The GitHostError a person can act on for an answer no caller handled itself."""
        status, message = refused.status, refused.message
        if status == 401 and jwt:
            return self._jwt_error(status, message, what)
        if status == 401:
            return GitHostError("github_bad_token", f"GitHub refused the App's token to {what}")
        if (status == 403 and "rate limit" in message.lower()) or status == 429:
            return GitHostError(
                "github_rate_limited",
                f"GitHub's rate limit stopped the attempt to {what}; try again later",
                retryable=True,
            )
        if status == 403:
            return GitHostError(
                "github_no_access",
                f"GitHub refused the App to {what} (403: {message}); is its installation "
                f"suspended?",
            )
        if status >= 500:
            return GitHostError(
                "github_unavailable", f"GitHub failed to {what} ({status}); try again",
                retryable=True,
            )  # fmt: skip
        return GitHostError("github_rejected", f"GitHub refused to {what} ({status}: {message})")


class _Refused(Exception):
    """GitHub's non-2xx answer, before it becomes a GitHostError (callers map some first)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class InstallationTokens:
    """The webhook front end's tokens: one per repository, reused until `REFRESH_BEFORE`
    seconds before it expires (a reaction must not wait for a token each time)."""

    def __init__(self, app: GitHubApp, permissions: dict[str, str] = FRONT_END_PERMISSIONS) -> None:
        self.app = app
        self.permissions = permissions
        self._tokens: dict[str, InstallationToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, repository: str) -> str:
        key = repository.lower()
        async with self._locks.setdefault(key, asyncio.Lock()):
            token = self._tokens.get(key)
            if token is None or token.expires_at - time.time() < REFRESH_BEFORE:
                token = await self.app.mint(repository, self.permissions)
                self._tokens[key] = token
            return token.value

    async def aclose(self) -> None:
        """Revoke what is cached: a stopped server leaves no live token behind."""
        tokens, self._tokens = list(self._tokens.values()), {}
        for token in tokens:
            await self.app.revoke(token)
        if tokens:  # the server may have closed the App's client already: close the new one
            await self.app.aclose()


def _missing(granted: dict[str, str], wanted: dict[str, str]) -> list[tuple[str, str, str]]:
    """(permission, wanted level, granted level) for each permission granted too low."""
    missing = []
    for name, level in wanted.items():
        has = granted.get(name, "none")
        if LEVELS.get(has, 0) < LEVELS.get(level, 0):
            missing.append((name, level, has))
    return missing


def _describe(permissions: dict[str, str]) -> str:
    return ", ".join(f"{name}: {level}" for name, level in permissions.items())


def _epoch(value: Any) -> float:
    """GitHub's `expires_at` (ISO 8601, `Z`); an hour from now when it is missing or odd."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() + 3600


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(data, dict):
        return str(data)[:200]
    parts = [str(data.get("message") or "")]
    for error in data.get("errors") or []:
        if isinstance(error, dict) and error.get("message"):
            parts.append(str(error["message"]))
    return "; ".join(p for p in parts if p)[:500]
