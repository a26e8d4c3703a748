"""The composition root: Settings in, the orchestrator's service and the web app out.

This is the one place that knows every implementation; everything else sees protocols. It holds
wiring only: which parts, built from which settings. Only `backspace/__main__.py` (the process's
entry point) imports it; tests/test_boundaries.py keeps it so.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

from starlette.applications import Starlette

from backspace.config import Settings, SettingsError
from backspace.http.application import web_app
from backspace.orchestrator.agent import AgentLimits, AnthropicModel, Model
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.egress.proxy import EgressProxy
from backspace.orchestrator.engines import Engine
from backspace.orchestrator.engines.backspace_loop import BackspaceLoop
from backspace.orchestrator.engines.claude_cli import SANDBOX_DIR, ClaudeCli
from backspace.orchestrator.engines.claude_code import ClaudeCode
from backspace.orchestrator.environment.local_layers import LocalLayerStore
from backspace.orchestrator.environment.policy import EnvironmentPolicy
from backspace.orchestrator.gateway import ModelGateway
from backspace.orchestrator.githosts.base import GitHost
from backspace.orchestrator.githosts.base_payload import BasePayloads, default_base_cache
from backspace.orchestrator.githosts.github import GitHubHost
from backspace.orchestrator.githosts.github_app import GitHubApp
from backspace.orchestrator.githosts.local import LocalGitHost
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.pipeline import Pipeline, PipelineSettings
from backspace.orchestrator.protected_paths import ProtectedPaths
from backspace.orchestrator.publish import Identity, Policy
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import RunFailure
from backspace.orchestrator.runner import Runner, RunnerLimits
from backspace.orchestrator.sandboxes.base import SandboxProvider
from backspace.orchestrator.sandboxes.bwrap import exposed
from backspace.orchestrator.sandboxes.local import (
    UNPRIVILEGED_UID,
    LocalLimits,
    LocalSandboxProvider,
    default_env_cache,
    default_root,
)
from backspace.orchestrator.service import Service, ServiceConfig
from backspace.orchestrator.store import open_store
from backspace.telemetry import Metrics, Telemetry, Tracing


def public_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def check_outside_sandbox_view(settings: Settings) -> None:
    """Refuse to run when this server's own files lie where every local sandbox can read them."""
    if settings.sandbox_backend != "local":
        return
    cwd = Path.cwd()
    env_file = settings.model_config.get("env_file")
    paths = {"the working directory": cwd, "BACKSPACE_DB": settings.db}
    if isinstance(env_file, str) and (cwd / env_file).exists():
        paths[env_file] = cwd / env_file
    paths["BACKSPACE_SANDBOX_ROOT"] = settings.sandbox_root or default_root(settings.db)
    paths["BACKSPACE_ENV_CACHE_DIR"] = settings.env_cache_dir or default_env_cache(settings.db)
    paths["BACKSPACE_BASE_CACHE_DIR"] = settings.base_cache_dir or default_base_cache(settings.db)
    found = exposed(paths)
    if found:
        raise SettingsError(
            "; ".join(found) + ": every sandboxed command can read there. Move them (the "
            "working directory, .env, BACKSPACE_DB, BACKSPACE_SANDBOX_ROOT and "
            "BACKSPACE_ENV_CACHE_DIR, BACKSPACE_BASE_CACHE_DIR) outside /usr and "
            "the /etc files the sandbox sees (backspace/orchestrator/sandboxes/bwrap.py lists them)"
        )


def sandbox_provider(settings: Settings) -> SandboxProvider:
    """BACKSPACE_SANDBOX (default: daytona when DAYTONA_API_KEY is set, else local)."""
    if settings.sandbox_backend == "daytona":
        # The Daytona SDK takes about a second to import: only a server that uses it pays.
        from backspace.orchestrator.sandboxes.daytona import DaytonaOptions, DaytonaSandboxProvider

        key = settings.daytona_api_key.get_secret_value() if settings.daytona_api_key else ""
        run_minutes = math.ceil(settings.max_sandbox_duration / 60)
        return DaytonaSandboxProvider(
            DaytonaOptions(
                api_key=key,
                api_url=settings.daytona_api_url,
                target=settings.daytona_target,
                snapshot=settings.daytona_snapshot,
                instance=settings.instance_name,
                auto_stop_minutes=run_minutes + 15,  # a backstop: runs delete their own
                auto_delete_minutes=60,
                network_block_all=settings.daytona_network_block_all,
                create_timeout=settings.daytona_create_timeout,
                env_snapshots=settings.daytona_env_snapshots,
            )
        )
    return LocalSandboxProvider(
        settings.sandbox_root or default_root(settings.db),
        LocalLimits(
            memory_mb=settings.sandbox_memory_mb,
            max_processes=settings.sandbox_max_processes,
            max_file_mb=settings.sandbox_max_file_mb,
            disk_mb=settings.sandbox_disk_mb,
            cpus=settings.sandbox_cpus,
        ),
        allow_unsandboxed=settings.allow_unsandboxed,
        layers=LocalLayerStore(
            settings.env_cache_dir or default_env_cache(settings.db), settings.env_cache_mb
        ),
        egress=EgressProxy(settings.egress_addresses),  # its thread starts with the first door
        tools={SANDBOX_DIR: ClaudeCli().directory},  # read-only: the claude-code engine's CLI
    )


def github_app(settings: Settings, redactor: Redactor) -> GitHubApp | None:
    """The GitHub App, when GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY are set."""
    if not settings.github_app_configured or settings.github_app_id is None:
        return None
    return GitHubApp(
        app_id=settings.github_app_id,
        private_key=settings.github_app_pem or "",
        api_url=settings.github_api_url,
        web_host=settings.github_host,
        redactor=redactor,
    )


def engines(
    settings: Settings, gateway: ModelGateway | None, url: str | None = None
) -> dict[str, Engine]:
    """Every engine a run may ask for. Claude Code needs the model gateway: its socket in local
    sandboxes; on Daytona, its network entry at `url` (the server's public URL)."""
    return {
        "backspace": BackspaceLoop(settings.tool_mode),
        "claude-code": ClaudeCode(
            ClaudeCli(),
            gateway,
            model=settings.model,
            retries=settings.model_retries,
            # As root, sandboxes run as `nobody`, who must be able to use the gateway's socket.
            owner_uid=UNPRIVILEGED_UID if os.geteuid() == 0 else None,
            public_url=url if settings.sandbox_backend == "daytona" else None,
        ),
    }


def build_service(settings: Settings, telemetry: Telemetry | None = None) -> Service:
    check_outside_sandbox_view(settings)
    redactor = Redactor(settings.secrets())
    max_bytes = int(settings.db_max_mb * 1024 * 1024) if settings.db_max_mb else None
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    store = open_store(
        database_url,
        settings.db,
        max_bytes=max_bytes,
        headroom_bytes=settings.db_headroom_mb * 1024 * 1024,
        # A sink per running run, the API's reads and the workers' loops share the pool.
        pool_max=max(10, settings.max_concurrent_runs + 6),
    )
    hub = EventHub(store)
    url = public_url(settings)
    sandboxes = sandbox_provider(settings)
    payloads = BasePayloads(
        settings.base_cache_dir or default_base_cache(settings.db),
        settings.base_cache_mb,
        settings.clone_depth,
    )
    hosts: dict[str, GitHost] = {
        "local": LocalGitHost(settings.local_repos, store, url, payloads),
        "github": GitHubHost(
            app=github_app(settings, redactor),
            app_identity=not settings.github_identity_set,
            token=settings.github_token.get_secret_value() if settings.github_token else None,
            api_url=settings.github_api_url,
            web_host=settings.github_host,
            cache_root=settings.db.resolve().parent / "backspace-cache" / "github",
            redactor=redactor,
            payloads=payloads,
            fork_owner=settings.github_fork_owner,
        ),
    }

    shared_model: list[AnthropicModel] = []  # one client for all runs: it pools connections
    model_lock = threading.Lock()  # runs call the factory from worker threads (see Pipeline.run)

    def model_factory() -> Model:
        with model_lock:
            return shared_model[0] if shared_model else make_model()

    def make_model() -> Model:
        if not settings.model_configured:
            raise RunFailure(
                "model_not_configured",
                "No model is configured: set ANTHROPIC_API_KEY, or ANTHROPIC_BASE_URL for an "
                "Anthropic-compatible server.",
            )
        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        shared_model.append(
            AnthropicModel(
                name=settings.model,
                api_key=key,
                base_url=settings.anthropic_base_url,
                retries=settings.model_retries,
                retry_delay=settings.model_retry_delay,
                timeout=settings.model_timeout,
                tracer_provider=telemetry.tracing.provider if telemetry else None,
            )
        )
        return shared_model[0]

    # The model gateway (its thread starts with the first claude-code run): a socket bound into
    # local sandboxes; reached over the network (/gateway/<capability>) from Daytona's.
    gateway = ModelGateway.from_settings(settings)
    offered = engines(settings, gateway, url)

    async def close_model() -> None:
        for model in shared_model:
            await model.close()
        if gateway is not None:
            await gateway.aclose()

    pipeline = Pipeline(
        sandboxes=sandboxes,
        hosts=hosts,
        model_factory=model_factory,
        settings=PipelineSettings(
            identity=Identity(settings.github_username, settings.github_email),
            limits=AgentLimits(
                max_turns=settings.max_turns,
                max_cost_usd=settings.max_cost_usd,
                max_tokens=settings.max_tokens,
                command_timeout=settings.command_timeout,
                max_output_chars=settings.max_output_chars,
            ),
            tool_mode=settings.tool_mode,
            environment=EnvironmentPolicy(
                egress_allow=HostList.from_setting(settings.egress_allow),
                agent_network=settings.agent_network == "allowlist",
                setup_timeout=settings.setup_timeout,
                verify_timeout=settings.verify_timeout,
                test_command=settings.test_command,
            ),
            max_bundle_bytes=settings.max_bundle_mb * 1024 * 1024,
            policy=Policy(
                max_files=settings.max_diff_files,
                allow_workflow_changes=settings.allow_workflow_changes,
                max_file_bytes=settings.max_file_change_mb * 1024 * 1024,
                max_change_bytes=settings.max_change_mb * 1024 * 1024,
                protected=ProtectedPaths(settings.protected_path_patterns),
            ),
            draft=settings.draft_prs,
            engine=settings.engine,
        ),
        redactor=redactor,
        engines=offered,
        telemetry=telemetry,
    )
    runner = Runner(
        store,
        hub,
        pipeline,
        redactor=redactor,
        limits=RunnerLimits(
            max_concurrent=settings.max_concurrent_runs,
            max_duration=settings.max_sandbox_duration,
            shutdown_grace=settings.shutdown_grace,
            lease_seconds=settings.lease_seconds,
        ),
        public_url=url,
        janitor=sandboxes,
        observer=telemetry.metrics if telemetry is not None else None,
    )
    if telemetry is not None:
        github_host = hosts["github"]
        if isinstance(github_host, GitHubHost):
            github_host.on_api_error = telemetry.metrics.github_error
    config = ServiceConfig(
        allowed_repos=settings.allowed_repo_patterns,
        max_prompt_chars=settings.max_prompt_chars,
        model_configured=settings.model_configured,
        model=settings.model,
        model_base_url=settings.anthropic_base_url or "https://api.anthropic.com",
        local_repos=settings.local_repos,
        janitor_interval=settings.janitor_interval,
    )
    return Service(
        config,
        store,
        hub,
        runner,
        sandboxes,
        hosts,
        redactor,
        url,
        close_model,
        engines=offered,
        default_engine=settings.engine,
        gateway=gateway,
    )


def create_app(settings: Settings) -> Starlette:
    """The ASGI app `backspace serve` runs: the service, behind HTTP and (when set) Slack and
    the GitHub webhook."""
    telemetry = Telemetry(
        Tracing.from_environment(), Metrics(settings.model, queue_counts=lambda: counts())
    )
    service = build_service(settings, telemetry)

    def counts() -> dict[str, int]:  # across the fleet, as last counted (the store's counts)
        return service.runner.last_counts()

    slack = None
    if settings.slack_configured:
        # slack-bolt takes a while to import: only a server with Slack configured pays.
        from backspace.slackbot.frontend import SlackFrontEnd

        slack = SlackFrontEnd(service, settings, telemetry.metrics.slack_error)
    github = None
    if settings.github_webhook_configured:
        from backspace.githubbot.frontend import GitHubFrontEnd

        github = GitHubFrontEnd(service, settings)
    return web_app(settings, service, slack, github, telemetry)
