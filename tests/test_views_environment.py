"""How a run's environment reads in Slack and on the web page: the setup stage, each attempt the
proxy refused (`network_blocked`) with its hint, and the receipt of backspace's own verification
(`verification`), including the draft pull request a failed verification opens.

The repository's `.backspace.toml` and whatever its commands print are the attacker's, so the
hostile strings below go into hosts, commands, output, reasons and hints: in Slack they must not
mention or link anyone, and on the page they must stay text. Slack: the real SlackReporter and
slack_sdk's AsyncWebClient against the recording fake Slack. Web: the real server replays a run
stored in its real SQLite database to Debian's headless Chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from backspace.http.openapi import document
from backspace.orchestrator.events import Event, EventType, RunStatus, Stage, now_iso
from backspace.orchestrator.store import Run, SqliteStore
from backspace.slackbot.messages import RunView
from backspace.slackbot.reporter import ChannelPacer, SlackReporter
from tests.fakes.slack import FakeSlack
from tests.records import record
from tests.server import ROOT, Server, start_server
from tests.test_openapi import _nullable
from tests.webdriver import Browser, available

pytestmark = pytest.mark.timeout(60)

TOKEN = "xoxb-views-token"
CHANNEL = "C0VIEWS"
RUN_ID = "0123456789abcdef0123456789abcdef"
FLOOD_ID = "f" * 32
IN_CI = os.environ.get("CI") == "true"

# Hostile text, as a repository's configuration or a sandboxed command could make it.
MENTIONS = ("<!channel>", "<!here>", "<@U0ADMIN>", "<https://evil.example|", "<img", "<script")
HOST = "<!channel>.evil.example"
COMMAND = "curl https://x <@U0ADMIN> <!here> <https://evil.example|click> `whoami`\nline two"
OUTPUT = "FAILED test_signup <!channel>\n<img src=x onerror=alert(1)>\n```<script>alert(2)</script>"
REASON = "not on the allowlist <@U0ADMIN>"
SETUP_COMMAND = "npm ci <!here> <img src=x onerror=alert(3)>"


def blocked(host: str, phase: str = "agent", command: str | None = COMMAND) -> dict[str, Any]:
    return {
        "host": host,
        "port": 443,
        "phase": phase,
        "command": command,
        "reason": REASON,
        "hint": f"add `{host}` to [network] {phase} in .backspace.toml",
    }


def receipt(passed: bool) -> dict[str, Any]:
    commands = [
        {
            "command": "pytest -q",
            "exit_code": 0 if passed else 1,
            "duration_ms": 3200,
            "timed_out": False,
            "output_tail": "3 passed" if passed else OUTPUT,
        },
        {
            "command": COMMAND,
            "exit_code": 0 if passed else 124,
            "duration_ms": 60_000,
            "timed_out": not passed,
            "output_tail": "ok",
        },
    ]
    return {
        "passed": passed,
        "draft": not passed,
        "environment": "cached abc123def456 <img src=x onerror=alert(4)>",
        "tree": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "commands": commands,
        "blocked": []
        if passed
        else [{k: blocked(HOST, "verify")[k] for k in ("host", "port", "phase", "command")}],
    }


def story(passed: bool, blocked_hosts: int = 5) -> list[tuple[str, dict[str, Any]]]:
    """A run's events (type, data) from start to end, as the pipeline emits them."""
    progress = EventType.PROGRESS

    def stage(name: Stage, message: str) -> tuple[str, dict[str, Any]]:
        return progress, {"stage": name, "message": message, "percentage": name.percentage}

    hosts = [HOST, *(f"mirror{n}.example.org" for n in range(1, blocked_hosts))]
    return [
        (EventType.START, {"repo_url": "local:widgets", "prompt": "validate names"}),
        stage(Stage.SANDBOX, "Creating the sandbox"),
        stage(Stage.CLONING, "Cloning the repository"),
        stage(Stage.SETUP, f"Setting up: {SETUP_COMMAND}"),
        (EventType.NETWORK_BLOCKED, blocked("evil-setup.example", "setup", SETUP_COMMAND)),
        stage(Stage.SETUP, "Setup finished in 12.3 s"),
        stage(Stage.AGENT, "The agent is working"),
        (EventType.AI_MESSAGE, {"message": "Looking at the signup code."}),
        *[(EventType.NETWORK_BLOCKED, blocked(host)) for host in hosts],
        stage(Stage.VALIDATING, "Checking the change"),
        stage(Stage.VERIFYING, "Verifying: pytest -q"),
        (EventType.VERIFICATION, receipt(passed)),
        stage(Stage.PUSHING, "Pushing the branch"),
        (
            EventType.PR_CREATED,
            {
                "pr_url": "https://github.com/o/widgets/pull/7",
                "branch": "backspace/validate",
                "title": "Validate names",
                "files_changed": 1,
                "additions": 2,
                "deletions": 0,
                "draft": not passed,
            },
        ),
        (
            EventType.COMPLETE,
            {
                "status": "succeeded",
                "message": "Opened https://github.com/o/widgets/pull/7",
                "pr_url": "https://github.com/o/widgets/pull/7",
                "duration_ms": 45_000,
            },
        ),
    ]


def as_events(items: list[tuple[str, dict[str, Any]]]) -> list[Event]:
    return [Event(RUN_ID, seq, str(t), now_iso(), data) for seq, (t, data) in enumerate(items, 1)]


# --- Slack -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def slack(module_slack: FakeSlack) -> FakeSlack:
    module_slack.reset()
    return module_slack


async def report(
    slack: FakeSlack,
    items: list[tuple[str, dict[str, Any]]],
    *,
    pause_after: Callable[[Event], bool] = lambda e: False,
    until: Callable[[], bool] = lambda: True,
) -> None:
    """Feed the events to a real SlackReporter; after an event `pause_after` picks, wait until
    `until` holds (what Slack shows in the middle of the run)."""
    client = AsyncWebClient(token=TOKEN, base_url=slack.api_url)
    view = RunView(
        run_id=RUN_ID, run_url=f"http://backspace.test/runs/{RUN_ID}", user="U1",
        repo="widgets", prompt="validate names",
    )  # fmt: skip
    reporter = SlackReporter(
        client, ChannelPacer(0.0), view, channel=CHANNEL, thread_ts=None, status_interval=0.02
    )
    assert await reporter.open() is None

    async def feed() -> AsyncIterator[Event]:
        for event in as_events(items):
            yield event
            if pause_after(event):
                await slack.wait_until(until, timeout=5)

    await asyncio.wait_for(reporter.follow(feed()), 20)


def posted(slack: FakeSlack) -> list[str]:
    """Everything the bot sent Slack: texts and blocks of posts and updates."""
    calls = slack.calls_to("chat.postMessage") + slack.calls_to("chat.update")
    return [json.dumps(c["args"].get("blocks")) + str(c["args"].get("text")) for c in calls]


def thread_texts(slack: FakeSlack) -> list[str]:
    return [str(m.get("text")) for m in slack.messages(CHANNEL) if m.get("thread_ts")]


def assert_nothing_mentions(slack: FakeSlack) -> None:
    for text in posted(slack):
        for raw in MENTIONS:
            assert raw not in text, f"{raw!r} reached Slack unescaped: {text[:400]}"


async def test_slack_status_shows_the_setup_stage(slack: FakeSlack) -> None:
    def status_says(words: str) -> Callable[[], bool]:
        return lambda: any(
            words in json.dumps(u["args"].get("blocks")) for u in slack.calls_to("chat.update")
        )

    await report(
        slack,
        story(passed=True),
        pause_after=lambda e: e.data.get("stage") == "setup" and "Setting up" in e.data["message"],
        until=status_says("Environment setup"),
    )
    during = [
        json.dumps(u["args"]["blocks"])
        for u in slack.calls_to("chat.update")
        if "Environment setup" in json.dumps(u["args"]["blocks"])
    ]
    assert during and "Setting up: npm ci &lt;!here&gt;" in during[0] and "25%" in during[0]
    assert any("*Environment setup*" in t for t in thread_texts(slack)), "the stage in the thread"
    assert_nothing_mentions(slack)


async def test_slack_posts_a_few_blocked_attempts_with_their_hint_then_folds_the_rest(
    slack: FakeSlack,
) -> None:
    await report(slack, story(passed=True, blocked_hosts=7))
    lines = [line for text in thread_texts(slack) for line in text.splitlines()]
    shown = [line for line in lines if "blocked" in line.lower() and ":443" in line]
    assert len(shown) == 3, shown
    first = shown[0]
    assert "`evil-setup.example:443`" in first and "setup" in first
    assert "add `evil-setup.example` to [network] setup in .backspace.toml" in first
    agent = shown[1]
    assert "&lt;!channel&gt;.evil.example:443" in agent and "[network] agent" in agent
    assert "&lt;@U0ADMIN&gt;" in agent, "the command and reason, escaped"
    assert any("and 5 more blocked attempts" in line for line in lines), lines
    assert_nothing_mentions(slack)


async def test_slack_posts_a_failed_verification_receipt_and_says_the_pr_is_a_draft(
    slack: FakeSlack,
) -> None:
    await report(slack, story(passed=False, blocked_hosts=1))
    texts = thread_texts(slack)
    (receipt_text,) = [t for t in texts if "Verification" in t]
    assert receipt_text.startswith(":x: Verification FAILED")
    assert "opened as a draft because verification failed" in receipt_text
    assert ":speech_balloon:" not in receipt_text, "the receipt is a message of its own"
    assert "`pytest -q` exit 1 · 3.2 s" in receipt_text
    assert "timed out after 60.0 s" in receipt_text
    assert "FAILED test_signup &lt;!channel&gt;" in receipt_text, "the failing command's tail"
    assert "cached abc123def456" in receipt_text and "4b825dc642cb" in receipt_text
    final = [
        str(c["args"]["text"])
        for c in slack.calls_to("chat.postMessage")
        if c["args"].get("reply_broadcast") in (True, "true", "1")
    ]
    assert len(final) == 1 and "draft pull request" in final[0]
    assert "verification failed" in final[0]
    last = json.dumps(slack.calls_to("chat.update")[-1]["args"]["blocks"])
    assert "Draft pull request" in last and "verification failed" in last
    assert_nothing_mentions(slack)


async def test_slack_posts_a_passed_verification_receipt(slack: FakeSlack) -> None:
    await report(slack, story(passed=True, blocked_hosts=1))
    (receipt_text,) = [t for t in thread_texts(slack) if "Verification" in t]
    assert receipt_text.startswith(":white_check_mark: Verification passed")
    assert "`pytest -q` exit 0 · 3.2 s" in receipt_text and "draft" not in receipt_text
    final = [c for c in slack.calls_to("chat.postMessage") if c["args"].get("reply_broadcast")]
    assert "draft" not in str(final[-1]["args"]["text"])


# --- OpenAPI -----------------------------------------------------------------------------------


def test_the_event_schema_knows_the_new_types() -> None:
    schema = _nullable(document("http://example")["components"]["schemas"]["Event"])
    for event in as_events(story(passed=False)) + as_events(story(passed=True)):
        jsonschema.validate(event.to_wire(), schema)
    good = as_events([(EventType.NETWORK_BLOCKED, blocked("h.example", command=None))])[0]
    jsonschema.validate(good.to_wire(), schema)
    wrong: list[dict[str, Any]] = [
        {**good.to_wire(), "port": "443"},
        {**good.to_wire(), "phase": "anytime"},
        {k: v for k, v in good.to_wire().items() if k != "hint"},
        {**as_events([(EventType.VERIFICATION, receipt(False))])[0].to_wire(), "passed": "no"},
        {**as_events([(EventType.VERIFICATION, receipt(False))])[0].to_wire(), "commands": [{}]},
    ]
    for bad in wrong:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# --- the web page ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Browser]]:
    """A server whose database holds two finished runs (verification failed, and passed)."""
    root = tmp_path_factory.mktemp("views-web")
    store = SqliteStore(root / "server" / "backspace.db")
    for run_id, passed in ((RUN_ID, False), (RUN_ID[::-1], True)):
        run = Run(
            id=run_id, status=RunStatus.SUCCEEDED, stage=Stage.COMPLETE,
            repo_url="local:widgets", prompt="validate names", created_at=now_iso(),
            finished_at=now_iso(), duration_ms=45_000,
            pr_url="https://github.com/o/widgets/pull/7",
        )  # fmt: skip
        asyncio.run(record(store, run, story(passed=passed, blocked_hosts=3)))
    flood = story(passed=True, blocked_hosts=70)  # a command retrying a refused host forever
    run = Run(
        id=FLOOD_ID, status=RunStatus.SUCCEEDED, stage=Stage.COMPLETE,
        repo_url="local:widgets", prompt="flood", created_at=now_iso(),
    )  # fmt: skip
    asyncio.run(record(store, run, flood))
    store.close()
    server = start_server(root / "server", {"BACKSPACE_LOCAL_REPOS": str(root / "repos")})
    browser = Browser()
    try:
        yield server, browser
    finally:
        browser.close()
        server.stop()


def open_run(server: Server, b: Browser, run_id: str) -> None:
    b.get(f"{server.url}/runs/{run_id}")
    b.wait(lambda: b.js("return document.body.dataset.complete === 'true'"), what="complete")


@pytest.mark.e2e
@pytest.mark.skipif(not available() and not IN_CI, reason="needs chromium and chromium-driver")
def test_the_page_shows_setup_blocked_attempts_and_the_receipt_as_text(
    stored: tuple[Server, Browser],
) -> None:
    server, b = stored
    open_run(server, b, RUN_ID)
    stages = b.js(
        "return [...document.querySelectorAll('#stages li')].map((li) => [li.dataset.stage, li.className])"
    )
    assert ["setup", "done"] in stages and ["verifying", "done"] in stages, stages
    assert [s for s, _ in stages].index("setup") < [s for s, _ in stages].index("agent")
    assert "Setup finished in 12.3 s" in b.text("#stages li[data-stage='setup']")

    items = b.js("return [...document.querySelectorAll('#blocked li')].map((li) => li.textContent)")
    assert len(items) == 4
    assert "evil-setup.example:443" in items[0] and "setup" in items[0]
    assert "add `evil-setup.example` to [network] setup in .backspace.toml" in items[0]
    assert HOST + ":443" in items[1] and COMMAND.splitlines()[0] in items[1]

    assert b.text("#verification-result") == "Verification FAILED"
    assert "draft because verification failed" in b.text("#verification")
    rows = b.js(
        "return [...document.querySelectorAll('#receipt tbody tr')].map((r) => [...r.cells].map((c) => c.textContent))"
    )
    assert [r[:3] for r in rows] == [
        ["pytest -q", "1", "3.2 s"],
        [COMMAND, "124 (timed out)", "1 min 0 s"],
    ]
    assert OUTPUT in rows[0][3]
    assert "cached abc123def456 <img src=x onerror=alert(4)>" in b.text("#verification")
    assert b.text("#pr").startswith("Draft pull request: ")
    assert SETUP_COMMAND in b.text("#log")
    assert b.js("return document.querySelectorAll('main img, main script').length") == 0
    assert b.alert_text() is None
    refresh = os.environ.get("BACKSPACE_REFRESH_SCREENSHOTS") == "1"
    b.set_size(1200, 1800)
    b.screenshot(
        (ROOT / "docs" / "screenshots" if refresh else server.log_path.parent)
        / "run-environment.png"
    )
    b.set_size(1200, 900)


@pytest.mark.e2e
@pytest.mark.skipif(not available() and not IN_CI, reason="needs chromium and chromium-driver")
def test_the_page_shows_a_passed_receipt(
    stored: tuple[Server, Browser],
) -> None:
    server, b = stored
    open_run(server, b, RUN_ID[::-1])
    assert b.text("#verification-result") == "Verification passed"
    assert "draft" not in b.text("#verification")
    assert b.text("#pr").startswith("Pull request: ")
    assert b.js("return document.querySelector('#verification').hidden") is False


@pytest.mark.e2e
@pytest.mark.skipif(not available() and not IN_CI, reason="needs chromium and chromium-driver")
def test_the_page_lists_at_most_fifty_blocked_attempts_then_counts(
    stored: tuple[Server, Browser],
) -> None:
    server, b = stored
    open_run(server, b, FLOOD_ID)
    items = b.js("return [...document.querySelectorAll('#blocked li')].map((li) => li.textContent)")
    assert len(items) == 51 and items[-1].startswith("and 21 more"), items[-1]
    assert (
        b.js("return document.querySelectorAll('#log li[data-type=network_blocked]').length") == 71
    )
