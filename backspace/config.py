"""Every setting backspace reads, from the environment (and `.env`), read once at start-up.

Outside services are reached through base URLs so that tests can point them at loopback fakes.
An invalid value stops start-up with a message naming the variable and what it accepts.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from backspace.orchestrator.egress.hosts import AddressMap, HostList, HostListError
from backspace.orchestrator.errors import SettingsError as SettingsError
from backspace.orchestrator.protected_paths import DEFAULT_PROTECTED, parse_patterns

HOST_PATTERN = re.compile(
    r"\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?"
)
"""A BACKSPACE_ALLOWED_HOSTS entry: *, a name or address (optionally *.name), an optional port."""


DEFAULT_EGRESS_ALLOW = (
    "pypi.org,files.pythonhosted.org,registry.npmjs.org,registry.yarnpkg.com,"
    "proxy.golang.org,sum.golang.org,index.crates.io,static.crates.io,crates.io,"
    "rubygems.org,repo.maven.apache.org,repo1.maven.org"
)
"""BACKSPACE_EGRESS_ALLOW's default: the common package registries, and nothing else."""


def read_private_key(value: str) -> str:
    """GITHUB_APP_PRIVATE_KEY as PEM text: the value itself (a `.env` line may hold it with
    literal \\n), or the file it names. ValueError says what is wrong; the key is never quoted."""
    text = value.strip()
    if "-----BEGIN" not in text:
        path = Path(text).expanduser()
        if "\n" in text or len(text) > 4096 or not path.is_file():
            raise ValueError(
                "GITHUB_APP_PRIVATE_KEY is neither a PEM private key (-----BEGIN RSA PRIVATE KEY-----"
                " ...) nor the path of a readable .pem file: give the key GitHub generated for "
                "the App, or its path"
            )
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"GITHUB_APP_PRIVATE_KEY names a file that cannot be read ({type(exc).__name__})"
            ) from None
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError(
            "GITHUB_APP_PRIVATE_KEY is not a readable PEM private key (malformed, truncated or "
            "password-protected): download a new private key from the App's settings page"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("GITHUB_APP_PRIVATE_KEY is not an RSA key: GitHub Apps sign with RSA keys")
    return text + "\n"


def pem_body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM: a log line or an error could hold one alone."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


class Settings(BaseSettings):
    _github_app_pem: str | None = PrivateAttr(None)
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # `KEY=` in .env means "not set", not "set to an empty string"
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # --- the model -------------------------------------------------------------------------
    anthropic_api_key: SecretStr | None = Field(None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(None, alias="ANTHROPIC_BASE_URL")
    model: str = Field("claude-sonnet-4-6", alias="BACKSPACE_MODEL", min_length=1)
    tool_mode: Literal["builtin", "schema"] = Field("builtin", alias="BACKSPACE_TOOL_MODE")
    engine: Literal["backspace", "claude-code"] = Field("backspace", alias="BACKSPACE_ENGINE")
    max_turns: int = Field(60, alias="BACKSPACE_MAX_TURNS", ge=1, le=1000)
    max_cost_usd: float = Field(5.0, alias="BACKSPACE_MAX_COST_USD", gt=0)
    max_tokens: int = Field(16000, alias="BACKSPACE_MAX_TOKENS", ge=256, le=128000)
    model_retries: int = Field(4, alias="BACKSPACE_MODEL_RETRIES", ge=0, le=20)
    model_retry_delay: float = Field(1.0, alias="BACKSPACE_MODEL_RETRY_DELAY", ge=0, le=120)
    model_timeout: float = Field(300.0, alias="BACKSPACE_MODEL_TIMEOUT", gt=0)

    # --- GitHub (issue 3) ----------------------------------------------------------------------
    github_token: SecretStr | None = Field(None, alias="GITHUB_TOKEN")
    github_api_url: str = Field("https://api.github.com", alias="GITHUB_API_URL")
    github_username: str = Field("backspace-bot", alias="GITHUB_USERNAME", min_length=1)
    github_web_host: str | None = Field(None, alias="GITHUB_WEB_HOST")
    github_fork_owner: str | None = Field(None, alias="GITHUB_FORK_OWNER")
    allowed_repos: str = Field("", alias="ALLOWED_REPOS")
    github_email: str = Field(
        "backspace-bot@users.noreply.github.com",
        alias="GITHUB_EMAIL",
        pattern=r"^[^\s<>]+@[^\s<>]+$",
    )

    # --- the GitHub App (issue 17): used instead of GITHUB_TOKEN when both are set ---------------
    github_app_id: int | None = Field(None, alias="GITHUB_APP_ID", ge=1)
    github_app_private_key: SecretStr | None = Field(None, alias="GITHUB_APP_PRIVATE_KEY")

    # --- the GitHub webhook (issue 16) ----------------------------------------------------------
    github_webhook_secret: SecretStr | None = Field(None, alias="GITHUB_WEBHOOK_SECRET")
    github_mention: str = Field(
        "@backspace", alias="GITHUB_MENTION", pattern=r"^@?[A-Za-z0-9][A-Za-z0-9_.\[\]/-]{0,79}$"
    )
    github_trigger_label: str = Field("", alias="GITHUB_TRIGGER_LABEL", max_length=50)

    # --- Slack (issue 5) -----------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field("https://slack.com/api/", alias="SLACK_API_URL")
    slack_command: str = Field("/backspace", alias="SLACK_COMMAND", pattern=r"^/[a-z0-9_-]{1,31}$")
    slack_allowed_teams: str = Field("", alias="SLACK_ALLOWED_TEAMS")
    slack_allowed_channels: str = Field("", alias="SLACK_ALLOWED_CHANNELS")
    slack_allowed_users: str = Field("", alias="SLACK_ALLOWED_USERS")
    slack_admin_users: str = Field("", alias="SLACK_ADMIN_USERS")
    slack_status_interval: float = Field(3.0, alias="SLACK_STATUS_INTERVAL", ge=0.1, le=60)
    slack_post_interval: float = Field(1.0, alias="SLACK_POST_INTERVAL", ge=0.05, le=60)

    # --- Daytona (issue 4) ---------------------------------------------------------------------
    daytona_api_key: SecretStr | None = Field(None, alias="DAYTONA_API_KEY")
    daytona_api_url: str = Field("https://app.daytona.io/api", alias="DAYTONA_API_URL")
    daytona_target: str | None = Field(None, alias="DAYTONA_TARGET")
    daytona_snapshot: str | None = Field(None, alias="DAYTONA_SNAPSHOT")
    daytona_network_block_all: bool = Field(True, alias="DAYTONA_NETWORK_BLOCK_ALL")
    daytona_create_timeout: float = Field(120.0, alias="DAYTONA_CREATE_TIMEOUT", gt=0)
    daytona_env_snapshots: int = Field(10, alias="DAYTONA_ENV_SNAPSHOTS", ge=0, le=1000)
    instance: str | None = Field(
        None, alias="BACKSPACE_INSTANCE", pattern=r"^[A-Za-z0-9._-]{1,63}$"
    )
    janitor_interval: float = Field(300.0, alias="BACKSPACE_JANITOR_INTERVAL", gt=0)

    # --- sandboxes -----------------------------------------------------------------------------
    sandbox: Literal["local", "daytona"] | None = Field(None, alias="BACKSPACE_SANDBOX")
    sandbox_root: Path | None = Field(None, alias="BACKSPACE_SANDBOX_ROOT")
    allow_unsandboxed: bool = Field(False, alias="BACKSPACE_ALLOW_UNSANDBOXED")
    sandbox_memory_mb: int = Field(4096, alias="BACKSPACE_SANDBOX_MEMORY_MB", ge=64)
    sandbox_max_processes: int = Field(512, alias="BACKSPACE_SANDBOX_MAX_PROCESSES", ge=8)
    sandbox_max_file_mb: int = Field(512, alias="BACKSPACE_SANDBOX_MAX_FILE_MB", ge=1)
    sandbox_disk_mb: int = Field(2048, alias="BACKSPACE_SANDBOX_DISK_MB", ge=16)
    sandbox_cpus: float | None = Field(None, alias="BACKSPACE_SANDBOX_CPUS", gt=0)
    env_cache_dir: Path | None = Field(None, alias="BACKSPACE_ENV_CACHE_DIR")
    env_cache_mb: int = Field(10240, alias="BACKSPACE_ENV_CACHE_MB", ge=1)
    clone_depth: int = Field(50, alias="BACKSPACE_CLONE_DEPTH", ge=1)
    base_cache_dir: Path | None = Field(None, alias="BACKSPACE_BASE_CACHE_DIR")
    base_cache_mb: int = Field(5120, alias="BACKSPACE_BASE_CACHE_MB", ge=1)
    command_timeout: float = Field(120.0, alias="BACKSPACE_COMMAND_TIMEOUT", gt=0)
    max_output_chars: int = Field(16000, alias="BACKSPACE_MAX_OUTPUT_CHARS", ge=1000)
    test_command: str | None = Field(None, alias="BACKSPACE_TEST_COMMAND")
    egress_resolve: str = Field("", alias="BACKSPACE_EGRESS_RESOLVE")

    # --- repository environments (issue 14) ----------------------------------------------------
    egress_allow: str = Field(DEFAULT_EGRESS_ALLOW, alias="BACKSPACE_EGRESS_ALLOW")
    agent_network: Literal["off", "allowlist"] = Field("off", alias="BACKSPACE_AGENT_NETWORK")
    setup_timeout: float = Field(600.0, alias="BACKSPACE_SETUP_TIMEOUT", gt=0)
    verify_timeout: float = Field(600.0, alias="BACKSPACE_VERIFY_TIMEOUT", gt=0)

    # --- git hosts and publishing --------------------------------------------------------------
    local_repos: Path | None = Field(None, alias="BACKSPACE_LOCAL_REPOS")
    max_diff_files: int = Field(200, alias="BACKSPACE_MAX_DIFF_FILES", ge=1)
    allow_workflow_changes: bool = Field(False, alias="BACKSPACE_ALLOW_WORKFLOW_CHANGES")
    protected_paths: str = Field(",".join(DEFAULT_PROTECTED), alias="BACKSPACE_PROTECTED_PATHS")
    draft_prs: bool = Field(True, alias="BACKSPACE_DRAFT_PRS")
    max_bundle_mb: int = Field(50, alias="BACKSPACE_MAX_BUNDLE_MB", ge=1)
    max_change_mb: int = Field(100, alias="BACKSPACE_MAX_CHANGE_MB", ge=1)
    max_file_change_mb: int = Field(25, alias="BACKSPACE_MAX_FILE_CHANGE_MB", ge=1)

    # --- service -------------------------------------------------------------------------------
    db: Path = Field(Path("backspace.db"), alias="BACKSPACE_DB")
    db_max_mb: float | None = Field(None, alias="BACKSPACE_DB_MAX_MB", gt=0)
    db_headroom_mb: int = Field(100, alias="BACKSPACE_DB_HEADROOM_MB", ge=0)
    database_url: SecretStr | None = Field(None, alias="BACKSPACE_DATABASE_URL")
    public_url: str | None = Field(None, alias="BACKSPACE_PUBLIC_URL")
    allowed_hosts: str = Field("", alias="BACKSPACE_ALLOWED_HOSTS")
    require_auth: bool = Field(False, alias="REQUIRE_AUTH")
    api_key: SecretStr | None = Field(None, alias="API_KEY")
    max_sandbox_duration: float = Field(600.0, alias="MAX_SANDBOX_DURATION", gt=0)
    max_concurrent_runs: int = Field(4, alias="MAX_CONCURRENT_RUNS", ge=1, le=10000)
    shutdown_grace: float = Field(20.0, alias="BACKSPACE_SHUTDOWN_GRACE", ge=0)
    lease_seconds: float = Field(30.0, alias="BACKSPACE_LEASE_SECONDS", ge=1, le=3600)
    max_prompt_chars: int = Field(20000, alias="BACKSPACE_MAX_PROMPT_CHARS", ge=1)
    max_body_bytes: int = Field(65536, alias="BACKSPACE_MAX_BODY_BYTES", ge=1024)
    sse_ping: float = Field(15.0, alias="BACKSPACE_SSE_PING", gt=0, le=300)
    header_timeout: float = Field(15.0, alias="BACKSPACE_HEADER_TIMEOUT", gt=0, le=600)
    body_timeout: float = Field(30.0, alias="BACKSPACE_BODY_TIMEOUT", gt=0, le=600)
    max_connections: int = Field(4096, alias="BACKSPACE_MAX_CONNECTIONS", ge=16)
    runs_per_minute: float = Field(30.0, alias="BACKSPACE_RUNS_PER_MINUTE", gt=0)
    runs_burst: int = Field(10, alias="BACKSPACE_RUNS_BURST", ge=1)
    debug: bool = Field(False, alias="DEBUG")
    log_format: Literal["auto", "json", "text"] = Field("auto", alias="BACKSPACE_LOG_FORMAT")
    host: str = Field("127.0.0.1", alias="HOST", min_length=1)
    port: int = Field(8000, alias="PORT", ge=0, le=65535)
    metrics_port: int | None = Field(None, alias="BACKSPACE_METRICS_PORT", ge=1, le=65535)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("postgresql", "postgres"):
            shown = f"a {scheme}:// URL" if scheme else "not a URL"
            raise ValueError(
                f"{shown}, where a PostgreSQL URL is needed: give "
                "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or leave it unset to keep the "
                "runs in the SQLite file at BACKSPACE_DB"
            )
        return SecretStr(url)

    @field_validator("egress_allow")
    @classmethod
    def _egress_hosts(cls, value: str) -> str:
        try:
            HostList.from_setting(value)
        except HostListError as exc:
            raise ValueError(f"{exc}; list host names or *.wildcards, comma-separated") from None
        return value

    @field_validator("protected_paths")
    @classmethod
    def _globs(cls, value: str) -> str:
        parse_patterns(value)
        return value

    @field_validator("egress_resolve")
    @classmethod
    def _egress_resolve(cls, value: str) -> str:
        AddressMap.parse(value)  # HostListError (a ValueError) says which item and why
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: str) -> str:
        for pattern in (p.strip() for p in value.split(",")):
            if pattern and not HOST_PATTERN.fullmatch(pattern):
                raise ValueError(
                    f"{pattern!r} is not a host name: give names like backspace.example.com, "
                    "10.0.0.5 or *.example.com (no scheme, no path; a port is ignored), or *"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.require_auth and not (self.api_key and self.api_key.get_secret_value()):
            raise ValueError("REQUIRE_AUTH=true needs API_KEY: set API_KEY to a long random value")
        app_key = self.github_app_private_key
        if bool(self.github_app_id) != bool(app_key and app_key.get_secret_value()):
            raise ValueError(
                "a GitHub App needs both GITHUB_APP_ID (the App's numeric id, on its settings page) "
                "and GITHUB_APP_PRIVATE_KEY (its private key: the PEM text, or the path of the "
                ".pem file GitHub gave you)"
            )
        if app_key is not None and app_key.get_secret_value():
            self._github_app_pem = read_private_key(app_key.get_secret_value())
        if self.sandbox == "daytona" and not (
            self.daytona_api_key and self.daytona_api_key.get_secret_value()
        ):
            raise ValueError("BACKSPACE_SANDBOX=daytona needs DAYTONA_API_KEY")
        return self

    # --- derived values ------------------------------------------------------------------------
    @property
    def sandbox_backend(self) -> Literal["local", "daytona"]:
        """BACKSPACE_SANDBOX, else daytona when DAYTONA_API_KEY is set, else local."""
        if self.sandbox:
            return self.sandbox
        return "daytona" if self.daytona_api_key else "local"

    @property
    def github_host(self) -> str:
        """The host people paste URLs of: GITHUB_WEB_HOST, else derived from GITHUB_API_URL."""
        if self.github_web_host:
            return self.github_web_host.lower()
        parts = urlsplit(self.github_api_url)
        host = (parts.hostname or "github.com").lower()
        return "github.com" if host == "api.github.com" else host

    @property
    def instance_name(self) -> str:
        """Labels this server's remote sandboxes, so its janitor never touches another's."""
        if self.instance:
            return self.instance
        digest = hashlib.sha256(str(self.db.resolve()).encode()).hexdigest()[:8]
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
        return f"{host}-{digest}"

    @property
    def github_app_configured(self) -> bool:
        """GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY are set: runs use the App, not GITHUB_TOKEN."""
        return self.github_app_id is not None and self._github_app_pem is not None

    @property
    def github_app_pem(self) -> str | None:
        """The App's private key as PEM text (read from its file when the setting is a path)."""
        return self._github_app_pem

    @property
    def github_identity_set(self) -> bool:
        """GITHUB_USERNAME or GITHUB_EMAIL differs from its default: commits use them even with
        an App. Compared with the defaults, not "was it set": .env.example sets both to them."""
        fields = type(self).model_fields
        return bool(
            self.github_username != fields["github_username"].default
            or self.github_email != fields["github_email"].default
        )

    @property
    def github_webhook_configured(self) -> bool:
        return bool(self.github_webhook_secret and self.github_webhook_secret.get_secret_value())

    @property
    def slack_configured(self) -> bool:
        token = self.slack_bot_token.get_secret_value() if self.slack_bot_token else ""
        secret = self.slack_signing_secret.get_secret_value() if self.slack_signing_secret else ""
        app_token = self.slack_app_token.get_secret_value() if self.slack_app_token else ""
        return bool(token and (secret or app_token))

    @property
    def allowed_repo_patterns(self) -> list[str]:
        return [p.strip() for p in self.allowed_repos.split(",") if p.strip()]

    @property
    def allowed_host_patterns(self) -> list[str]:
        """BACKSPACE_ALLOWED_HOSTS as TrustedHostMiddleware patterns (lower case, no port)."""
        patterns = []
        for raw in self.allowed_hosts.split(","):
            pattern = raw.strip().lower()
            if pattern.startswith("["):
                pattern = pattern[: pattern.index("]") + 1]
            else:
                pattern = pattern.split(":", 1)[0]
            if pattern:
                patterns.append(pattern)
        return patterns

    @property
    def egress_addresses(self) -> AddressMap:
        """BACKSPACE_EGRESS_RESOLVE: names the sandbox's door connects to fixed addresses."""
        return AddressMap.parse(self.egress_resolve)

    @property
    def protected_path_patterns(self) -> tuple[str, ...]:
        return parse_patterns(self.protected_paths)

    @property
    def model_configured(self) -> bool:
        key = self.anthropic_api_key.get_secret_value() if self.anthropic_api_key else ""
        return bool(key or self.anthropic_base_url)

    def secrets(self) -> list[str]:
        """Every secret value this server knows, for redaction."""
        values = [
            self.anthropic_api_key,
            self.github_token,
            self.github_app_private_key,
            self.github_webhook_secret,
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.daytona_api_key,
            self.api_key,
        ]
        found = [v.get_secret_value() for v in values if v and v.get_secret_value()]
        if self.database_url is not None:  # the URL, and its password alone
            found.append(self.database_url.get_secret_value())
            password = urlsplit(self.database_url.get_secret_value()).password
            if password:
                found.append(unquote(password))
        if self._github_app_pem:  # the key read from its file, and its base64 body alone
            found.append(self._github_app_pem.strip())
            found.extend(pem_body_lines(self._github_app_pem))
        return found


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc") or ()
    name = str(loc[0]) if isinstance(loc, tuple) and loc else "settings"
    field = Settings.model_fields.get(name)
    variable = (field.alias if field and field.alias else name).upper()
    message = str(error.get("msg", "invalid value"))
    if name == "settings" or not loc:
        return message.removeprefix("Value error, ")
    return f"{variable}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings once; raise SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [_describe(dict(e)) for e in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
