"""The GitHub App side of the fake GitHub: Apps, installations, JWTs and installation tokens.

Why: a run that acts as a GitHub App must be tested against the rules GitHub enforces, or a
token that reaches too far, a JWT that GitHub would refuse or a token that is never revoked
would pass unnoticed. This module holds the App data (an App with an RSA key pair, its
installations, every installation token issued) and the checks GitHub makes:

- a JWT (``Authorization: Bearer``) is RS256-signed by the App's private key, its ``iss`` is the
  App id (string or number), ``iat`` is no later than now + 60 s (clock skew) and ``exp`` is in
  the future and no more than 10 minutes away; each refusal carries GitHub's own message;
- an installation token (``ghs_…``, one hour) reaches only its repositories and only with its
  permissions (``write`` includes ``read``); a missing repository is 404, a missing permission
  403 "Resource not accessible by integration", an expired or revoked token 401.

The fake is stricter than GitHub in one way: ``metadata: read`` is not implied by other
permissions, so a caller must ask for what it uses (least privilege, said out loud).
"""

from __future__ import annotations

import functools
import json
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "JWT_MESSAGES",
    "LEVELS",
    "FakeApp",
    "FakeInstallation",
    "IssuedToken",
    "JwtRefused",
    "check_jwt",
    "new_token",
    "private_key_pem",
    "satisfies",
]

LEVELS = {"read": 1, "write": 2, "admin": 3}
CLOCK_SKEW = 60
"""Seconds an ``iat`` may be ahead of GitHub's clock."""
MAX_JWT_LIFETIME = 600
"""A JWT's ``exp`` may be at most this many seconds in the future."""
TOKEN_LIFETIME = 3600

JWT_MESSAGES = {
    "decode": "A JSON web token could not be decoded",
    "issuer": "Integration not found",
    "expired": (
        "'Expiration time' claim ('exp') must be a numeric value representing the future time "
        "at which the assertion expires"
    ),
    "too_far": "'Expiration time' claim ('exp') is too far in the future",
    "issued_at": (
        "'Issued at' claim ('iat') must be an Integer representing the time that the assertion "
        "was issued"
    ),
}


@functools.cache
def _key_pair() -> tuple[str, str]:
    """One RSA key per process (generation takes tens of milliseconds): (private, public) PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # "BEGIN RSA PRIVATE KEY", like GitHub's
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def private_key_pem(*, other: bool = False) -> str:
    """The process's test key (``other=True``: a second, different key, for "wrong key" tests)."""
    return _other_key_pair()[0] if other else _key_pair()[0]


@functools.cache
def _other_key_pair() -> tuple[str, str]:
    return _key_pair.__wrapped__()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeApp:
    """A registered GitHub App; ``private_key_pem`` is what its owner downloaded."""

    id: int
    slug: str
    name: str
    owner: str
    permissions: dict[str, str]
    events: list[str]
    private_key_pem: str
    public_key: str
    bot_id: int
    client_id: str
    created_at: str

    @property
    def bot_login(self) -> str:
        """The bot user the App acts as: ``<slug>[bot]``."""
        return f"{self.slug}[bot]"

    @property
    def bot_email(self) -> str:
        """The bot's noreply address, as GitHub shows it on the App's commits."""
        return f"{self.bot_id}+{self.bot_login}@users.noreply.github.com"


@dataclass
class FakeInstallation:
    """The App installed on an account: on ``repositories`` (lower-case full names) or "all"."""

    id: int
    app: FakeApp
    account: str
    repositories: list[str] | None
    """None means every repository of ``account``, present and future."""
    permissions: dict[str, str]
    created_at: str

    def covers(self, full_name: str) -> bool:
        owner = full_name.partition("/")[0]
        if owner.lower() != self.account.lower():
            return False
        return self.repositories is None or full_name.lower() in self.repositories


@dataclass
class IssuedToken:
    """An installation token the fake issued; tests assert on its scope and on its uses."""

    token: str
    installation: FakeInstallation
    repositories: list[str] | None
    """Lower-case full names it may reach; None means the whole installation."""
    permissions: dict[str, str]
    issued: float
    expires: float
    revoked: float | None = None
    used_for: list[str] = field(default_factory=list)
    """Every request it was accepted for: ``GET /repos/o/r``, ``git-receive-pack o/r``…"""
    refused: list[str] = field(default_factory=list)
    """Every request it was refused for, with the status: ``GET /repos/o/other -> 404``."""

    @property
    def expires_at(self) -> str:
        return _iso(self.expires)

    @property
    def alive(self) -> bool:
        return self.revoked is None and time.time() < self.expires

    def reaches(self, full_name: str) -> bool:
        if not self.installation.covers(full_name):
            return False
        return self.repositories is None or full_name.lower() in self.repositories

    def allows(self, permission: str, level: str) -> bool:
        return satisfies(self.permissions, permission, level)


def satisfies(granted: dict[str, str], permission: str, level: str) -> bool:
    """``write`` includes ``read``; ``admin`` includes both."""
    have = LEVELS.get(granted.get(permission, ""), 0)
    return have >= LEVELS[level]


def new_token() -> str:
    """``ghs_`` and 36 letters and digits, the shape of GitHub's installation tokens."""
    alphabet = string.ascii_letters + string.digits
    return "ghs_" + "".join(secrets.choice(alphabet) for _ in range(36))


class JwtRefused(Exception):
    """A JWT GitHub would refuse; ``str()`` is GitHub's message (answered with 401)."""


def looks_like_jwt(credential: str) -> bool:
    parts = credential.split(".")
    return len(parts) == 3 and all(parts[:2]) and credential.startswith("eyJ")


def check_jwt(credential: str, apps: dict[int, FakeApp], now: float | None = None) -> FakeApp:
    """The App a JWT authenticates, or :class:`JwtRefused` with GitHub's message."""
    now = time.time() if now is None else now
    jws = jwt.api_jws.PyJWS()
    try:  # JWS level only: PyJWT's claim checks differ from GitHub's (``iss`` may be a number)
        unverified = jws.decode_complete(credential, options={"verify_signature": False})
        claims = json.loads(unverified["payload"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise JwtRefused(JWT_MESSAGES["decode"]) from exc
    if unverified["header"].get("alg") != "RS256" or not isinstance(claims, dict):
        raise JwtRefused(JWT_MESSAGES["decode"])
    issuer = claims.get("iss")
    try:
        app = apps[int(issuer)] if isinstance(issuer, (int, str)) else None
    except (KeyError, ValueError):
        app = None
    if app is None:
        raise JwtRefused(JWT_MESSAGES["issuer"])
    try:  # the signature, with the App's public key and RS256 only
        jws.decode_complete(credential, app.public_key, algorithms=["RS256"])
    except jwt.PyJWTError as exc:
        raise JwtRefused(JWT_MESSAGES["decode"]) from exc
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or isinstance(issued, bool) or issued > now + CLOCK_SKEW:
        raise JwtRefused(JWT_MESSAGES["issued_at"])
    if not isinstance(expires, (int, float)) or isinstance(expires, bool) or expires <= now:
        raise JwtRefused(JWT_MESSAGES["expired"])
    if expires > now + MAX_JWT_LIFETIME or expires - issued > MAX_JWT_LIFETIME + CLOCK_SKEW:
        raise JwtRefused(JWT_MESSAGES["too_far"])
    return app


def installation_json(
    inst: FakeInstallation, api_url: str, web_url: str, account: Any
) -> dict[str, Any]:
    """GitHub's ``installation`` object (``account`` is the owner's simple-user JSON)."""
    return {
        "id": inst.id,
        "account": account,
        "repository_selection": "all" if inst.repositories is None else "selected",
        "access_tokens_url": f"{api_url}/app/installations/{inst.id}/access_tokens",
        "repositories_url": f"{api_url}/installation/repositories",
        "html_url": f"{web_url}/settings/installations/{inst.id}",
        "app_id": inst.app.id,
        "client_id": inst.app.client_id,
        "app_slug": inst.app.slug,
        "target_id": account["id"],
        "target_type": account["type"] if account["type"] != "Bot" else "User",
        "permissions": dict(inst.permissions),
        "events": list(inst.app.events),
        "created_at": inst.created_at,
        "updated_at": inst.created_at,
        "single_file_name": None,
        "has_multiple_single_files": False,
        "single_file_paths": [],
        "suspended_by": None,
        "suspended_at": None,
    }


def app_json(app: FakeApp, api_url: str, web_url: str, owner: Any, installs: int) -> dict[str, Any]:
    """GitHub's ``integration`` object, as ``GET /app`` answers it."""
    return {
        "id": app.id,
        "slug": app.slug,
        "node_id": f"A_kwDO{app.id:08d}",
        "client_id": app.client_id,
        "owner": owner,
        "name": app.name,
        "description": f"{app.name} (a fake GitHub App)",
        "external_url": f"{web_url}/apps/{app.slug}",
        "html_url": f"{web_url}/apps/{app.slug}",
        "created_at": app.created_at,
        "updated_at": app.created_at,
        "permissions": dict(app.permissions),
        "events": list(app.events),
        "installations_count": installs,
    }


def public_key_pem() -> str:
    """The public half of :func:`private_key_pem` (what GitHub keeps)."""
    return _key_pair()[1]
