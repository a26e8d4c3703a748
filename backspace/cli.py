"""`backspace serve | run | doctor`.

The CLI is a front end: it does not build the service itself but is handed a `Wiring` by the
entry point (backspace/__main__.py), which knows the composition root.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backspace import __version__
from backspace.config import Settings, SettingsError, load_settings
from backspace.logs import configure_logging
from backspace.orchestrator.events import Event, EventType, RunStatus
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.service import Reason, Refusal

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from backspace.orchestrator.service import Service

EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Wiring:
    """How to build what the commands need, from the settings they loaded."""

    service: Callable[[Settings], Service]
    web_app: Callable[[Settings], ASGIApp]


def main(argv: Sequence[str] | None, wiring: Wiring) -> int:
    parser = argparse.ArgumentParser(
        prog="backspace", description="Turn a sentence into a pull request."
    )
    parser.add_argument("--version", action="version", version=f"backspace {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service (API, SSE, Slack)")
    serve.add_argument("--host", help="override HOST")
    serve.add_argument("--port", type=int, help="override PORT")
    run = commands.add_parser("run", help="run one request here and print the pull request URL")
    run.add_argument(
        "repo", help="repository: an absolute path or local:<name> below BACKSPACE_LOCAL_REPOS"
    )
    run.add_argument("prompt", help="what to change, in a sentence")
    run.add_argument("--base", help="base branch (default: the repository's default branch)")
    commands.add_parser("doctor", help="say what is configured and reachable")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.command == "serve":
        if args.host:
            overrides["HOST"] = args.host
        if args.port is not None:
            overrides["PORT"] = args.port
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"backspace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "serve":
            return serve_command(settings, wiring)
        if args.command == "run":
            return asyncio.run(run_command(settings, wiring, args.repo, args.prompt, args.base))
        return asyncio.run(doctor_command(settings, wiring))
    except SettingsError as exc:  # a layout the sandbox could read, found while starting
        print(f"backspace: {exc}", file=sys.stderr)
        return EXIT_USAGE


def serve_command(settings: Settings, wiring: Wiring) -> int:
    import uvicorn

    from backspace.http.deadlines import with_deadlines
    from backspace.runtime import DESCRIPTOR_RESERVE, raise_descriptor_limit

    json_format = None if settings.log_format == "auto" else settings.log_format == "json"
    configure_logging(Redactor(settings.secrets()), debug=settings.debug, json_format=json_format)
    descriptors = raise_descriptor_limit()
    connections = max(16, min(settings.max_connections, descriptors - DESCRIPTOR_RESERVE))
    if connections < settings.max_connections:
        logging.getLogger(__name__).warning(
            "only %d open files are allowed: at most %d connections (BACKSPACE_MAX_CONNECTIONS "
            "is %d); raise the hard limit (ulimit -Hn, LimitNOFILE=) for more",
            descriptors,
            connections,
            settings.max_connections,
        )
    app = wiring.web_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.debug,
        timeout_graceful_shutdown=5,
        # httptools parses and writes HTTP with less CPU per SSE write than h11; its protocol
        # here adds read deadlines (backspace/http/deadlines.py). The plain asyncio loop, not
        # uvloop: uvloop forks (no vfork) for every sandbox and git command, 8 ms each at this
        # process's size, with the loop stopped.
        http=with_deadlines(settings.header_timeout, settings.body_timeout),
        loop="asyncio",
        timeout_keep_alive=5,
        # Past this many connections and requests at once, uvicorn answers 503.
        limit_concurrency=connections,
    )
    return 0


async def run_command(
    settings: Settings, wiring: Wiring, repo: str, prompt: str, base: str | None
) -> int:
    console = Console(stderr=True)
    configure_logging(Redactor(settings.secrets()), debug=settings.debug, json_format=False)
    service = wiring.service(settings)
    service.runner.own_runs_only()
    try:
        await service.store.open()
        try:
            run = await service.admit(repo, prompt, base_branch=base, source="cli")
        except Refusal as refusal:
            text, code = refusal_message(refusal)
            console.print(text)
            return code
        await service.startup()  # the run waits in the queue for this process's worker
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(
            signal.SIGINT, lambda: asyncio.ensure_future(service.cancel(run.id))
        )
        final = await _follow(console, service.subscribe(run.id))
    finally:
        await service.aclose()
    status = final.data.get("status") if final else None
    if final and final.data.get("pr_url"):
        print(final.data["pr_url"])
    return 0 if status in (RunStatus.SUCCEEDED, RunStatus.NO_CHANGES) else EXIT_FAILED


def refusal_message(refusal: Refusal) -> tuple[str, int]:
    """The CLI's words (rich markup) and exit code for a refusal of the orchestrator's door:
    2 for what the command line got wrong, 1 for what the server cannot do now."""
    message = escape(refusal.message)
    match refusal.reason:
        case Reason.PROMPT:
            return f"[red]backspace: the prompt {message}[/red]", EXIT_USAGE
        case Reason.REPOSITORY:
            return f"[red]backspace: {message}[/red]", EXIT_USAGE
        case Reason.GIT_HOST:
            subject = escape(refusal.subject or "")
            return f"backspace: {subject} cannot be used: {message}", EXIT_USAGE
        case Reason.MODEL:
            return f"[red]backspace: {message}[/red]", EXIT_FAILED
        case Reason.SANDBOX:
            subject = escape(refusal.subject or "")
            return (
                f"[red]backspace: the {subject} sandbox cannot be used: {message}[/red]",
                EXIT_FAILED,
            )
        case _:
            return f"backspace: {message}", EXIT_FAILED


async def _follow(console: Console, events: Any) -> Event | None:
    """Show the run as it goes: a progress bar for the stage, a line per agent step."""
    final: Event | None = None
    cost = 0.0
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=console, transient=False,
    ) as progress:  # fmt: skip
        bar = progress.add_task("queued", total=100)
        async for event in events:
            data = event.data
            match event.type:
                case EventType.PROGRESS:
                    progress.update(
                        bar,
                        completed=data.get("percentage", 0),
                        description=escape(str(data.get("message", ""))),
                    )
                case EventType.AI_MESSAGE:
                    console.print(
                        f"[cyan]agent[/cyan] {escape(str(data.get('message', '')).strip())}",
                        highlight=False,
                    )
                case EventType.TOOL_BASH:
                    code = data.get("exit_code")
                    console.print(
                        f"[dim]$ {escape(str(data.get('command', '')))}[/dim]  [{'green' if code == 0 else 'red'}]exit {code}[/]",
                        highlight=False,
                    )
                case EventType.TOOL_READ | EventType.TOOL_EDIT | EventType.TOOL_WRITE:
                    verb = {
                        EventType.TOOL_READ: "read",
                        EventType.TOOL_EDIT: "edit",
                        EventType.TOOL_WRITE: "write",
                    }[EventType(event.type)]
                    console.print(
                        f"[dim]{verb} {escape(str(data.get('filepath', '')))}[/dim]",
                        highlight=False,
                    )
                case EventType.NETWORK_BLOCKED:
                    console.print(
                        f"[yellow]blocked[/yellow] {escape(str(data.get('host')))}:{data.get('port')} "
                        f"in {escape(str(data.get('phase')))}: {escape(str(data.get('hint', '')))}",
                        highlight=False,
                    )
                case EventType.VERIFICATION:
                    verdict = "[green]passed[/green]" if data.get("passed") else "[red]FAILED[/red]"
                    console.print(f"[bold]verification[/bold] {verdict}", highlight=False)
                    for step in data.get("commands", []):
                        console.print(
                            f"  {escape(str(step.get('command')))}: exit {step.get('exit_code')}",
                            highlight=False,
                        )
                case EventType.USAGE:
                    cost = float(data.get("cost_usd", 0.0))
                case EventType.PR_CREATED:
                    console.print(
                        f"[green]pull request[/green] {escape(str(data.get('pr_url')))} ({data.get('files_changed')} files, +{data.get('additions')} −{data.get('deletions')})"
                    )
                case EventType.PR_UPDATED:
                    console.print(
                        f"[green]pull request updated[/green] {escape(str(data.get('pr_url')))} with {escape(str(data.get('commit', ''))[:12])} ({data.get('files_changed')} files, +{data.get('additions')} −{data.get('deletions')})"
                    )
                case EventType.FOLLOWUP_RECEIVED:
                    console.print(
                        f"[cyan]follow-up ({escape(str(data.get('mode')))})[/cyan] {escape(str(data.get('prompt'))[:200])}",
                        highlight=False,
                    )
                case EventType.ERROR:
                    console.print(
                        f"[red]error[/red] {escape(str(data.get('code')))}: {escape(str(data.get('message')))}",
                        highlight=False,
                    )
                case EventType.COMPLETE:
                    progress.update(bar, completed=100, description=str(data.get("status")))
                    final = event
    if final is not None:
        seconds = final.data.get("duration_ms", 0) / 1000
        console.print(
            f"[bold]{final.data.get('status')}[/bold] in {seconds:.1f} s, ${cost:.4f}: {escape(str(final.data.get('message', '')))}",
            highlight=False,
        )
    return final


async def doctor_command(settings: Settings, wiring: Wiring) -> int:
    services = wiring.service(settings)
    console = Console()
    table = Table(title=f"backspace {__version__}", show_lines=False)
    table.add_column("part")
    table.add_column("state")
    table.add_column("detail")
    problems = 0

    def row(part: str, ok: bool | None, detail: str) -> None:
        nonlocal problems
        state = {True: "[green]ok[/green]", False: "[red]problem[/red]", None: "[dim]off[/dim]"}[ok]
        problems += ok is False
        table.add_row(part, state, detail)

    model_ok, model_detail = await _probe_model(settings)
    row("model", model_ok, model_detail)
    sandbox_ok, sandbox_detail = services.sandboxes.check()
    probe = getattr(services.sandboxes, "probe", None)
    if sandbox_ok and probe is not None:  # a remote sandbox: ask it
        sandbox_ok, sandbox_detail = await probe()
    row(f"sandbox ({services.sandboxes.name})", sandbox_ok, sandbox_detail)
    report = getattr(services.sandboxes, "limits_report", None)
    if sandbox_ok and report is not None:
        limits = report()
        degraded = limits["degraded"]
        in_force = (
            f"per run: {limits['memory_mb']} MB memory, {limits['processes']} processes, "
            f"{limits['cpus']:g} CPUs, {limits['disk_mb']} MB disk, {limits['shm_mb']} MB /dev/shm "
            f"(cgroup {limits['cgroup']})"
        )
        state = "[yellow]degraded[/yellow]" if degraded else "[green]ok[/green]"
        lines = [in_force, *(f"{name}: {why}" for name, why in degraded.items())]
        table.add_row("sandbox limits", state, escape("\n".join(lines)))
    for name, host in services.hosts.items():
        usable, detail = host.check()
        mode = getattr(host, "mode", None)
        if mode == "app":  # ask GitHub whether the App can sign in (the key is never shown)
            usable, detail = await host.probe()  # type: ignore[attr-defined]
            row(f"git host ({name}, GitHub App)", usable, detail)
            continue
        label = f"git host ({name}, {mode})" if mode else f"git host ({name})"
        row(label, usable if usable else None, detail)
    engines = services.engine_report()
    default = engines.pop("default")
    for name, engine in engines.items():
        chosen = " (the default: BACKSPACE_ENGINE)" if name == default else ""
        # An engine that is not the default and cannot run is off, not a problem.
        ready: bool | None = True if engine["usable"] else (False if name == default else None)
        row(f"engine ({name})", ready, escape(engine["message"] + chosen))
    room, room_message = services.store.headroom()
    row(
        "store",
        await services.store.ping() and room,
        f"{services.store.describe()}: {room_message}",
    )
    row(
        "auth",
        True if settings.require_auth else None,
        "API key required" if settings.require_auth else "off: REQUIRE_AUTH=false",
    )
    await services.aclose()
    console.print(table)
    return EXIT_FAILED if problems else 0


async def _probe_model(settings: Settings) -> tuple[bool, str]:
    if not settings.model_configured:
        return False, "not configured: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL)"
    import anthropic

    key = (
        settings.anthropic_api_key.get_secret_value()
        if settings.anthropic_api_key
        else "no-key-needed"
    )
    client = anthropic.AsyncAnthropic(
        api_key=key, base_url=settings.anthropic_base_url, max_retries=0, timeout=10
    )
    where = settings.anthropic_base_url or "api.anthropic.com"
    try:
        await client.models.retrieve(settings.model)
        return True, f"{settings.model} at {where}"
    except anthropic.AuthenticationError:
        return False, f"{where} rejected the key: check ANTHROPIC_API_KEY"
    except anthropic.NotFoundError:
        return True, f"{where} answers (it does not list {settings.model}; check BACKSPACE_MODEL)"
    except anthropic.APIStatusError as exc:
        return True, f"{where} answers ({exc.status_code})"
    except anthropic.APIConnectionError:
        return False, f"cannot reach {where}: check ANTHROPIC_BASE_URL and the network"
    finally:
        await client.close()
