"""The web interface in a real browser: Debian's headless Chromium, driven over W3C WebDriver
(tests/webdriver.py), against the real server, the fake model, real git and the local sandbox.

Screenshots of the pages are written to a temporary directory, or to docs/screenshots/ (which
the README shows) with BACKSPACE_REFRESH_SCREENSHOTS=1, so a test run leaves the tree clean.
Without Chromium the module is skipped, except in CI (CI=true), where that fails the run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import ROOT, Server, start_server
from tests.tls import TLS
from tests.webdriver import Browser, available

IN_CI = os.environ.get("CI") == "true"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not available() and not IN_CI,
        reason="needs chromium and chromium-driver (scripts/bootstrap --dev)",
    ),
]

DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
API_KEY = "web-ui-test-key-0123456789abcdef"
XSS_TEXT = "Look: <script>alert(1)</script> and <img src=x onerror=alert(2)>"
XSS_COMMAND = "echo '<img src=x onerror=alert(3)>'; echo '<script>alert(4)</script>'"


@dataclass
class Web:
    server: Server
    browser: Browser
    fake: FakeAnthropic
    screenshots: Path  # docs/screenshots/ only when asked to refresh them


def scenarios() -> dict[str, list[Any]]:
    slow_command = "for i in 1 2 3; do echo line $i; sleep 0.3; done"
    return {
        "ui-edit": [
            Reply([Text("Let me look at the code."), ToolCall("bash", {"command": "cat app.py"})]),
            Reply([EDIT_SIGNUP], delay=0.2),
            finish(),
        ],
        "ui-cancel": [Reply([ToolCall("bash", {"command": "sleep 127; echo slept"})]), finish()],
        "ui-reload": [
            *[
                Reply([Text(f"Step {n}."), ToolCall("bash", {"command": slow_command})], delay=0.3)
                for n in range(1, 5)
            ],
            Reply([EDIT_SIGNUP], delay=0.3),
            finish(),
        ],
        "ui-auth": [
            Reply([Text("With a key."), ToolCall("bash", {"command": slow_command})], delay=0.3),
            Reply([EDIT_SIGNUP], delay=0.3),
            finish(),
        ],
        "ui-xss": [
            Reply([Text(XSS_TEXT), ToolCall("bash", {"command": XSS_COMMAND})]),
            Reply([EDIT_SIGNUP]),
            finish(title="<script>alert(5)</script>"),
        ],
    }


def env(repos: Path, fake: FakeAnthropic, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "sk-ant-api03-test-key-0123456789",
        "ANTHROPIC_BASE_URL": fake.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        **extra,
    }


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    if not available():  # reached only in CI: a browser test must not pass there by skipping
        pytest.fail(
            "CI=true but chromium and chromium-driver are missing (scripts/bootstrap --dev)"
        )
    root = tmp_path_factory.mktemp("web")
    repos = root / "repos"
    make_repo(repos, "widgets")
    refresh = os.environ.get("BACKSPACE_REFRESH_SCREENSHOTS") == "1"
    screenshots = DOCS_SCREENSHOTS if refresh else root / "screenshots"
    screenshots.mkdir(exist_ok=True)
    with FakeAnthropic(scenarios=scenarios()) as fake:
        server = start_server(root / "server", env(repos, fake))
        browser = Browser()
        try:
            yield Web(server, browser, fake, screenshots)
        finally:
            browser.close()
            server.stop()


def start_run(server: Server, prompt: str, headers: dict[str, str] | None = None) -> str:
    response = httpx.post(
        f"{server.url}/api/code",
        json={"repo_url": "local:widgets", "prompt": prompt},
        headers={"Accept": "application/json", **(headers or {})},
        verify=TLS,
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def stored_events(
    server: Server, run_id: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every event of a finished run (its stream replays them all, then ends)."""
    response = httpx.get(
        f"{server.url}/api/runs/{run_id}/events", headers=headers, timeout=30, verify=TLS
    )
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def shown_seqs(browser: Browser) -> list[int]:
    seqs: list[int] = browser.js(
        "return [...document.querySelectorAll('#log [data-seq]')].map((e) => Number(e.dataset.seq))"
    )
    return seqs


def wait_complete(browser: Browser, timeout: float = 30) -> None:
    browser.wait(
        lambda: browser.js("return document.body.dataset.complete === 'true'"),
        timeout,
        "the run page to show `complete`",
    )


def test_start_a_run_from_the_form_and_watch_it_reach_the_pull_request(web: Web) -> None:
    b = web.browser
    b.get(f"{web.server.url}/")
    # An error's JSON `detail` is shown.
    b.type("#repo", "not a repo at all")
    b.type("#prompt", "anything")
    b.click("#submit")
    detail = b.wait(lambda: b.text("#form-error"), what="the form's error")
    assert detail.startswith("invalid request: repo_url:")
    assert "/runs/" not in b.url

    b.js("document.querySelector('#repo').value = ''")
    b.type("#repo", "local:widgets")
    b.js("document.querySelector('#prompt').value = ''")
    b.type("#prompt", "ui-edit: add input validation to signup")
    b.click("#submit")
    b.wait(lambda: "/runs/" in b.url, what="the run page")
    run_id = b.url.rsplit("/", 1)[1]
    wait_complete(b)

    assert b.text("#status") == "succeeded"
    pr_url = b.js("return document.querySelector('#pr-link').href")
    assert pr_url.startswith(f"{web.server.url}/prs/")
    assert b.text("#repo") == "local:widgets"
    assert b.js("return document.querySelector('#cancel').disabled") is True
    assert int(b.js("return document.querySelector('#bar').value")) == 100
    assert b.text("#cost").startswith("$")
    # The command, folded, with its output; the edit as -/+ lines.
    summary = b.text("#log li[data-type='Tool: Bash'] summary")
    assert summary.startswith("$ cat app.py") and "exit 0" in summary
    assert "def signup(name):" in b.text("#log li[data-type='Tool: Bash'] details pre")
    assert (
        b.js("return document.querySelector(\"#log li[data-type='Tool: Bash'] details\").open")
        is False
    )
    diff = b.js(
        "return [...document.querySelectorAll(\"#log li[data-type='Tool: Edit'] .l\")].map((e) => e.textContent)"
    )
    assert diff == [
        "-    return name",
        "+    if not name:",
        "+        raise ValueError('name is required')",
        "+    return name",
    ]
    assert b.text("#log li[data-type='AI Message']").endswith("Let me look at the code.")
    assert shown_seqs(b) == [e["seq"] for e in stored_events(web.server, run_id)]
    b.set_size(1200, 1500)
    b.screenshot(web.screenshots / "run.png")

    b.get(pr_url)
    assert b.text("h1") == "Validate the signup name"
    assert b.js("return getComputedStyle(document.querySelector('.l.add')).backgroundColor") == (
        "rgb(218, 251, 225)"  # the shared stylesheet's colour for added lines
    )
    b.screenshot(web.screenshots / "pr.png")
    b.set_size(1200, 900)


def test_the_cancel_button_cancels_the_run(web: Web) -> None:
    b = web.browser
    run_id = start_run(web.server, "ui-cancel: wait a long time")
    b.get(f"{web.server.url}/runs/{run_id}")
    b.wait(lambda: web.fake.requests_for("ui-cancel"), what="the agent's first turn")
    b.wait(lambda: b.js("return !document.querySelector('#cancel').disabled"), what="Cancel")
    b.click("#cancel")
    wait_complete(b)
    assert b.text("#status") == "cancelled"
    assert b.text("#log li[data-type='complete']").endswith("cancelled" + _message_tail(b))
    assert (
        httpx.get(f"{web.server.url}/api/runs/{run_id}", verify=TLS).json()["status"] == "cancelled"
    )


def _message_tail(b: Browser) -> str:
    text = b.text("#log li[data-type='complete'] .ev-message")
    return text.split("cancelled", 1)[1]


def test_reloading_mid_run_continues_with_nothing_repeated_or_lost(web: Web) -> None:
    b = web.browser
    run_id = start_run(web.server, "ui-reload: several slow steps")
    b.get(f"{web.server.url}/runs/{run_id}")
    b.wait(lambda: len(shown_seqs(b)) >= 8, what="the first events")
    before = shown_seqs(b)
    assert before == list(range(1, len(before) + 1))
    assert not b.js("return document.body.dataset.complete === 'true'"), "reloaded after the end"
    b.refresh()
    wait_complete(b)
    events = stored_events(web.server, run_id)
    assert shown_seqs(b) == [e["seq"] for e in events] == list(range(1, len(events) + 1))
    messages = b.js(
        "return [...document.querySelectorAll(\"#log li[data-type='AI Message'] .ev-message\")].map((e) => e.textContent)"
    )
    assert messages == [e["message"] for e in events if e["type"] == "AI Message"]
    # Live output chunks give way to each command's folded output: each line is visible once.
    visible = b.js("return document.querySelector('#log').innerText")
    assert visible.count("$ for i in 1 2 3") == 4
    # An event seen again (a replay after a reconnect) is ignored.
    b.js("handle({type: 'AI Message', seq: 3, message: 'a replayed event'})")
    assert "a replayed event" not in b.text("#log")
    assert shown_seqs(b) == [e["seq"] for e in events]


def test_the_agents_output_is_shown_as_text_never_as_html(web: Web) -> None:
    b = web.browser
    run_id = start_run(web.server, "ui-xss: print some markup")
    b.get(f"{web.server.url}/runs/{run_id}")
    wait_complete(b)
    log = b.text("#log")
    assert XSS_TEXT in log
    assert XSS_COMMAND in log
    assert "<img src=x onerror=alert(3)>\n<script>alert(4)</script>" in log
    assert b.js("return document.querySelectorAll('#log script, #log img, main img').length") == 0
    assert b.alert_text() is None
    # The pull request page escapes the title too (whose markup is broken by invisible U+200B).
    b.get(b.js("return document.querySelector('#pr-link').href"))
    assert b.text("h1").replace("\u200b", "") == "<script>alert(5)</script>"
    assert b.alert_text() is None
    assert (
        httpx.get(f"{web.server.url}/api/runs/{run_id}", verify=TLS).json()["status"] == "succeeded"
    )


def test_the_run_list_shows_the_runs_newest_first(web: Web) -> None:
    b = web.browser
    runs = httpx.get(f"{web.server.url}/api/runs", verify=TLS).json()["runs"]
    assert len(runs) == 4
    b.get(f"{web.server.url}/")
    b.wait(lambda: b.js("return document.querySelectorAll('#runs tr').length") == 4, what="rows")
    rows = b.js(
        "return [...document.querySelectorAll('#runs tr')].map((r) => [r.dataset.runId, "
        "[...r.cells].map((c) => c.textContent)])"
    )
    assert [r[0] for r in rows] == [r["id"] for r in runs]
    by_id = {r["id"]: r for r in runs}
    for run_id, (repo, request, status, pr, duration, cost, _) in rows:
        run = by_id[run_id]
        assert repo == "local:widgets" and request == run["prompt"]
        assert status.startswith(run["status"])
        assert (pr == "pull request") == (run["pr_url"] is not None)
        assert duration.endswith(" s") and cost.startswith("$")
    # Live: a new run appears without a reload.
    run_id = start_run(web.server, "ui-edit: once more")
    b.wait(
        lambda: b.js("return document.querySelector('#runs tr').dataset.runId") == run_id,
        timeout=10,
        what="the new run in the list",
    )
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{web.server.url}/api/runs/{run_id}", verify=TLS).json()["status"] == "running"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    b.wait(lambda: "succeeded" in b.text("#runs tr:first-child"), timeout=10, what="the new status")
    b.screenshot(web.screenshots / "index.png")
    # Readable on a phone: nothing wider than the screen.
    b.set_size(390, 844)
    assert b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1") is True
    b.set_size(1200, 900)


def test_with_auth_the_pages_are_public_and_the_key_from_the_form_is_used(
    web: Web, tmp_path: Path
) -> None:
    repos = tmp_path / "repos"
    make_repo(repos, "widgets")
    server = start_server(
        tmp_path / "server", env(repos, web.fake, REQUIRE_AUTH="true", API_KEY=API_KEY)
    )
    b = web.browser
    try:
        assert httpx.get(f"{server.url}/", verify=TLS).status_code == 200
        assert httpx.get(f"{server.url}/static/run.js", verify=TLS).status_code == 200
        assert httpx.get(f"{server.url}/api/runs", verify=TLS).status_code == 401
        b.get(f"{server.url}/")
        assert "requires an API key" in b.wait(lambda: b.text("#list-error"), what="the 401")
        b.type("#repo", "local:widgets")
        b.type("#prompt", "ui-auth: with a key")
        b.click("#submit")
        assert "authentication required" in b.wait(lambda: b.text("#form-error"), what="401")
        b.type("#key", API_KEY)
        b.click("#submit")
        b.wait(lambda: "/runs/" in b.url, what="the run page")
        run_id = b.url.rsplit("/", 1)[1]
        b.wait(lambda: len(shown_seqs(b)) >= 5, what="the first events")
        b.refresh()  # the key stays in sessionStorage; fetch() follows the stream again
        wait_complete(b)
        assert b.text("#status") == "succeeded"
        events = stored_events(server, run_id, {"Authorization": f"Bearer {API_KEY}"})
        assert shown_seqs(b) == [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert b.js("return sessionStorage.getItem('backspace.apiKey')") == API_KEY
    finally:
        b.js("sessionStorage.clear()")
        server.stop()
