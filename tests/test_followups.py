"""Follow-ups through the real server: a run's pull request as a conversation that continues.

Real uvicorn, real git in local repositories, real bubblewrap, the SDK against the fake model.
A follow-up is a new run in its parent's family: it starts from the branch's head as it is now,
pushes one more commit (never a force push), and updates the same PR (a comment and a row in the
body's Runs table); a family's runs never overlap; a steer reaches the running agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backspace.orchestrator.pull_request import RUNS_END, RUNS_START, runs_row, with_run
from tests.conftest import git, make_repo
from tests.fakes.anthropic import Reply, Text, ToolCall
from tests.helpers import Shared, base_env, shared_rig, wait_for_process, wait_status
from tests.scenarios import EDIT_SIGNUP, finish
from tests.sse import collect, events_of, of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

STRIP = ToolCall(
    "str_replace_based_edit_tool",
    {
        "command": "str_replace",
        "path": "app.py",
        "old_str": "    return name\n",
        "new_str": "    return name.strip()\n",
    },
)


def note(path: str, text: str) -> ToolCall:
    return ToolCall(
        "str_replace_based_edit_tool", {"command": "create", "path": path, "file_text": text}
    )


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    with shared_rig(
        "followups",
        lambda repos, model: base_env(
            repos, model, MAX_CONCURRENT_RUNS="4", BACKSPACE_SANDBOX="local"
        ),
    ) as rig:
        yield rig


async def first_run(shared: Shared, name: str, key: str, steps: list[Any]) -> dict[str, Any]:
    """A repository `name` and a finished first run on it; its `complete` plus the PR."""
    make_repo(shared.repos, name)
    shared.model.scenarios[key] = steps
    events = await post_run(
        shared.server.url, {"repo_url": f"local:{name}", "prompt": f"{key}: validate the name"}
    )
    assert events[-1]["status"] == "succeeded", events[-3:]
    created = of_type(events, "pr_created")[0]
    return {"run_id": events[0]["run_id"], **created}


async def follow_up(
    shared: Shared, run_id: str, prompt: str, *, mode: str = "queue", stream: bool = True
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    url = f"{shared.server.url}/api/runs/{run_id}/followups"
    body = {"prompt": prompt, "mode": mode}
    async with httpx.AsyncClient(verify=TLS, timeout=90) as client:
        if stream:
            response, frames = await collect(client, "POST", url, json=body)
            return response, events_of(frames)
        response = await client.post(url, json=body, headers={"Accept": "application/json"})
        return response, []


async def get(shared: Shared, path: str) -> Any:
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        response = await client.get(f"{shared.server.url}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def pr_id(pr_url: str) -> str:
    return pr_url.rsplit("/", 1)[1]


def commits(origin: Path, base: str, branch: str) -> list[str]:
    return git(origin, "rev-list", "--first-parent", f"{base}..{branch}").split()


async def test_a_follow_up_adds_a_commit_to_the_same_branch_and_updates_the_same_pr(
    shared: Shared,
) -> None:
    first = await first_run(shared, "fam-whole", "fam-whole-1", [Reply([EDIT_SIGNUP]), finish()])
    origin = shared.repos / "fam-whole"
    base = git(origin, "rev-parse", "main").strip()
    first_head = git(origin, "rev-parse", first["branch"]).strip()
    shared.model.scenarios["fam-whole-2"] = [
        Reply([STRIP]),
        finish("Strip the name", "Strips whitespace before the check."),
    ]

    response, events = await follow_up(shared, first["run_id"], "fam-whole-2: also strip spaces")

    assert response.status_code == 200 and events[-1]["status"] == "succeeded", events[-3:]
    second_id = events[0]["run_id"]
    assert events[0]["parent_id"] == first["run_id"] == events[0]["family_id"]
    assert of_type(events, "pr_created") == []
    updated = of_type(events, "pr_updated")[0]
    assert updated["pr_url"] == first["pr_url"] and updated["branch"] == first["branch"]
    assert events[-1]["pr_url"] == first["pr_url"]
    # One more commit on the same branch, on top of the first: nothing was rewritten.
    assert commits(origin, base, first["branch"]) == [updated["commit"], first_head]
    assert git(origin, "rev-parse", f"{updated['commit']}^").strip() == first_head
    shown = git(origin, "show", f"{first['branch']}:app.py")
    assert "raise ValueError" in shown and "name.strip()" in shown

    # What the follow-up's agent was told: the first request and its summary, the PR's diff
    # so far, then the new request.
    told = shared.model.requests_for("fam-whole-2")[0]["messages"][0]["content"][0]["text"]
    assert "fam-whole-1: validate the name" in told
    assert "Validate the signup name" in told and "Adds a check." in told
    assert "<pr_diff>" in told and "+        raise ValueError('name is required')" in told
    assert told.index("<pr_diff>") < told.index("<task>\nfam-whole-2: also strip spaces\n</task>")

    # The family, from either end.
    family = (await get(shared, f"/api/runs/{second_id}"))["family"]
    assert family["id"] == first["run_id"] and family["parent_id"] == first["run_id"]
    assert [r["id"] for r in family["runs"]] == [first["run_id"], second_id]
    assert family["pr_url"] == first["pr_url"] and family["branch"] == first["branch"]
    parent = (await get(shared, f"/api/runs/{first['run_id']}"))["family"]
    assert parent["children"] == [second_id] and parent["parent_id"] is None

    # The same PR: its body's Runs table has both runs, and a comment says what changed.
    pr = await get(shared, f"/api/prs/{pr_id(first['pr_url'])}")
    runs = pr["body"][pr["body"].index(RUNS_START) : pr["body"].index(RUNS_END)]
    assert first["run_id"][:8] in runs and second_id[:8] in runs
    assert pr["head_sha"] == updated["commit"]
    [comment] = pr["comments"]
    assert (
        updated["commit"][:12] in comment["body"]
        and "fam-whole-2: also strip spaces" in comment["body"]
    )
    assert "Strips whitespace" in comment["body"] and second_id in comment["body"]


async def test_a_follow_up_sent_while_the_first_run_works_waits_for_it(shared: Shared) -> None:
    make_repo(shared.repos, "fam-queue")
    marker = f"fam-queue-sleep-{time.monotonic_ns()}"
    shared.model.scenarios["fam-queue-1"] = [
        Reply([EDIT_SIGNUP]),
        Reply([ToolCall("bash", {"command": f"sleep 3; echo {marker}"})]),
        finish(),
    ]
    shared.model.scenarios["fam-queue-2"] = [Reply([STRIP]), finish("Strip the name")]
    async with httpx.AsyncClient(verify=TLS, timeout=90) as client:
        started = await client.post(
            f"{shared.server.url}/api/code",
            json={"repo_url": "local:fam-queue", "prompt": "fam-queue-1: validate"},
            headers={"Accept": "application/json"},
        )
        first_id = started.json()["id"]
        await wait_for_process(marker)
        response, _ = await follow_up(shared, first_id, "fam-queue-2: strip", stream=False)
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["steered"] is False and "queued behind run" in answer["message"]
        second_id = answer["run_id"]
        assert second_id != first_id and answer["status"] == "queued"
        first, second = (
            await wait_status(shared.server, first_id, timeout=60),
            await wait_status(shared.server, second_id, timeout=60),
        )
    assert first["status"] == second["status"] == "succeeded"
    first_events = await _events(shared, first_id)
    second_events = await _events(shared, second_id)
    [received] = of_type(first_events, "followup_received")
    assert received["mode"] == "queue" and received["followup_run_id"] == second_id
    waiting = [e["message"] for e in of_type(second_events, "progress") if e["stage"] == "queued"]
    assert any(f"Waiting for run {first_id} of the same pull request" in m for m in waiting)
    # Never at the same time: the follow-up left the queue after the first run completed.
    first_end = first_events[-1]["timestamp"]
    second_start = next(e for e in of_type(second_events, "progress") if e["stage"] == "sandbox")
    assert second_start["timestamp"] >= first_end
    assert second["pr_url"] == first["pr_url"]


async def test_two_follow_ups_at_once_run_one_after_the_other(shared: Shared) -> None:
    first = await first_run(shared, "fam-two", "fam-two-1", [Reply([EDIT_SIGNUP]), finish()])
    origin = shared.repos / "fam-two"
    base = git(origin, "rev-parse", "main").strip()
    shared.model.scenarios["fam-two-a"] = [Reply([note("a.txt", "a\n")]), finish("Add a")]
    shared.model.scenarios["fam-two-b"] = [Reply([note("b.txt", "b\n")]), finish("Add b")]
    (ra, _), (rb, _) = await asyncio.gather(
        follow_up(shared, first["run_id"], "fam-two-a: add a", stream=False),
        follow_up(shared, first["run_id"], "fam-two-b: add b", stream=False),
    )
    ids = [ra.json()["run_id"], rb.json()["run_id"]]
    runs = [await wait_status(shared.server, i, timeout=60) for i in ids]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert {r["pr_url"] for r in runs} == {first["pr_url"]}
    spans = []
    for run_id in ids:
        events = await _events(shared, run_id)
        begin = next(e for e in of_type(events, "progress") if e["stage"] == "sandbox")
        spans.append((begin["timestamp"], events[-1]["timestamp"]))
    spans.sort()
    assert spans[0][1] <= spans[1][0], "the two follow-ups overlapped"
    # Three commits in a line on one branch; both files are there.
    assert len(commits(origin, base, first["branch"])) == 3
    tree = git(origin, "ls-tree", "--name-only", first["branch"]).split()
    assert "a.txt" in tree and "b.txt" in tree


async def test_steer_reaches_the_running_agent_at_its_next_turn(shared: Shared) -> None:
    make_repo(shared.repos, "fam-steer")
    marker = f"fam-steer-sleep-{time.monotonic_ns()}"
    shared.model.scenarios["fam-steer-1"] = [
        Reply([ToolCall("bash", {"command": f"sleep 2; echo {marker}"})]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    async with httpx.AsyncClient(verify=TLS, timeout=90) as client:
        started = await client.post(
            f"{shared.server.url}/api/code",
            json={"repo_url": "local:fam-steer", "prompt": "fam-steer-1: validate"},
            headers={"Accept": "application/json"},
        )
        run_id = started.json()["id"]
        await wait_for_process(marker)
        response, _ = await follow_up(
            shared, run_id, "please also reject whitespace-only names", mode="steer", stream=False
        )
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["steered"] is True and answer["run_id"] == run_id
        final = await wait_status(shared.server, run_id, timeout=60)
    assert final["status"] == "succeeded"
    events = await _events(shared, run_id)
    [received] = of_type(events, "followup_received")
    assert received["mode"] == "steer" and "whitespace-only" in received["prompt"]
    # The request after the sleeping command carries the message, next to the command's result.
    second_turn = shared.model.requests_for("fam-steer-1")[1]["messages"][-1]["content"]
    texts = [b.get("text", "") for b in second_turn if b.get("type") == "text"]
    assert any(
        "<followup>\nplease also reject whitespace-only names\n</followup>" in t for t in texts
    )
    assert any(b.get("type") == "tool_result" for b in second_turn)


async def test_a_steer_during_the_last_turn_is_read_before_the_run_ends(shared: Shared) -> None:
    make_repo(shared.repos, "fam-late")
    shared.model.scenarios["fam-late-1"] = [
        Reply([EDIT_SIGNUP]),
        Reply([Text("Done."), ToolCall("finish", {"title": "Validate"})], delay=2.5),
        Reply([STRIP]),
        finish("Validate and strip"),
    ]
    async with httpx.AsyncClient(verify=TLS, timeout=90) as client:
        started = await client.post(
            f"{shared.server.url}/api/code",
            json={"repo_url": "local:fam-late", "prompt": "fam-late-1: validate"},
            headers={"Accept": "application/json"},
        )
        run_id = started.json()["id"]
        deadline = time.monotonic() + 30
        while len(shared.model.requests_for("fam-late-1")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        response, _ = await follow_up(shared, run_id, "and strip it", mode="steer", stream=False)
        assert response.json()["steered"] is True
        final = await wait_status(shared.server, run_id, timeout=60)
    assert final["status"] == "succeeded"
    third = shared.model.requests_for("fam-late-1")[2]["messages"][-1]["content"]
    declined = [b for b in third if b.get("type") == "tool_result"]
    assert declined and "Not finished yet" in str(declined[0]["content"])
    assert any("and strip it" in b.get("text", "") for b in third)
    app = git(shared.repos / "fam-late", "show", f"{final['branch']}:app.py")
    assert "name.strip()" in app


async def test_a_steer_with_no_run_working_starts_a_new_run(shared: Shared) -> None:
    first = await first_run(shared, "fam-idle", "fam-idle-1", [Reply([EDIT_SIGNUP]), finish()])
    shared.model.scenarios["fam-idle-2"] = [Reply([STRIP]), finish("Strip")]
    response, _ = await follow_up(
        shared, first["run_id"], "fam-idle-2: strip", mode="steer", stream=False
    )
    answer = response.json()
    assert answer["steered"] is False and "starts as a new run" in answer["message"]
    run = await wait_status(shared.server, answer["run_id"], timeout=60)
    assert run["status"] == "succeeded" and run["pr_url"] == first["pr_url"]


async def test_a_follow_up_on_a_merged_pr_opens_a_new_one_from_the_current_base(
    shared: Shared,
) -> None:
    first = await first_run(shared, "fam-merged", "fam-merged-1", [Reply([EDIT_SIGNUP]), finish()])
    origin = shared.repos / "fam-merged"
    git(origin, "merge", "--quiet", "--no-ff", "-m", "Merge the PR", first["branch"])
    merged_base = git(origin, "rev-parse", "main").strip()
    shared.model.scenarios["fam-merged-2"] = [Reply([STRIP]), finish("Strip the name")]

    _, events = await follow_up(shared, first["run_id"], "fam-merged-2: strip")

    assert events[-1]["status"] == "succeeded", events[-3:]
    assert of_type(events, "pr_updated") == []
    created = of_type(events, "pr_created")[0]
    assert created["pr_url"] != first["pr_url"] and created["branch"] != first["branch"]
    said = [e["message"] for e in of_type(events, "progress")]
    assert any("was merged: starting a new one" in m for m in said)
    # From the current base, which holds the merged change.
    assert git(origin, "rev-parse", f"{created['branch']}^").strip() == merged_base
    pr = await get(shared, f"/api/prs/{pr_id(created['pr_url'])}")
    assert f"continues pull request #{pr_id(first['pr_url'])}, which was merged" in pr["body"]
    assert events[0]["parent_id"] == first["run_id"]


async def test_a_branch_someone_else_pushed_to_is_built_on_not_overwritten(shared: Shared) -> None:
    first = await first_run(shared, "fam-pushed", "fam-pushed-1", [Reply([EDIT_SIGNUP]), finish()])
    origin = shared.repos / "fam-pushed"
    git(origin, "checkout", "--quiet", first["branch"])
    (origin / "human.txt").write_text("a reviewer's fix\n")
    git(origin, "add", "human.txt")
    git(origin, "commit", "--quiet", "-m", "A reviewer's commit")
    theirs = git(origin, "rev-parse", "HEAD").strip()
    git(origin, "checkout", "--quiet", "main")
    shared.model.scenarios["fam-pushed-2"] = [Reply([STRIP]), finish("Strip")]

    _, events = await follow_up(shared, first["run_id"], "fam-pushed-2: strip")

    assert events[-1]["status"] == "succeeded", events[-3:]
    commit = of_type(events, "pr_updated")[0]["commit"]
    assert git(origin, "rev-parse", f"{commit}^").strip() == theirs
    assert git(origin, "show", f"{first['branch']}:human.txt") == "a reviewer's fix\n"
    told = shared.model.requests_for("fam-pushed-2")[0]["messages"][0]["content"][0]["text"]
    assert "human.txt" in told  # the PR's diff so far includes their commit


async def test_a_branch_that_moves_while_the_follow_up_works_is_never_overwritten(
    shared: Shared,
) -> None:
    first = await first_run(shared, "fam-race", "fam-race-1", [Reply([EDIT_SIGNUP]), finish()])
    origin = shared.repos / "fam-race"
    marker = f"fam-race-sleep-{time.monotonic_ns()}"
    shared.model.scenarios["fam-race-2"] = [
        Reply([STRIP]),
        Reply([ToolCall("bash", {"command": f"sleep 2; echo {marker}"})]),
        finish("Strip"),
    ]
    response, _ = await follow_up(shared, first["run_id"], "fam-race-2: strip", stream=False)
    run_id = response.json()["run_id"]
    await wait_for_process(marker)
    git(origin, "checkout", "--quiet", first["branch"])
    (origin / "human.txt").write_text("pushed meanwhile\n")
    git(origin, "add", "human.txt")
    git(origin, "commit", "--quiet", "-m", "Pushed while the follow-up worked")
    theirs = git(origin, "rev-parse", "HEAD").strip()
    git(origin, "checkout", "--quiet", "main")

    final = await wait_status(shared.server, run_id, timeout=60)

    assert final["status"] == "failed" and final["error"]["code"] == "branch_moved", final
    assert "send the follow-up again" in final["error"]["message"]
    assert git(origin, "rev-parse", first["branch"]).strip() == theirs, "their commit stays"


async def test_a_follow_ups_environment_is_the_base_branchs_not_an_earlier_change(
    shared: Shared,
) -> None:
    """An earlier run's change to .backspace.toml (prompt injection in the repository, say)
    is published for review, but never runs in a follow-up's setup, which has the network."""
    make_repo(
        shared.repos,
        "fam-env",
        {
            "app.py": "def signup(name):\n    return name\n",
            ".backspace.toml": '[setup]\nrun = "echo base-setup > .env-made"\n'
            '[verify]\nrun = ["grep -q raise app.py"]\n',
        },
    )
    evil = '[setup]\nrun = "echo evil-setup > .env-made"\n'
    shared.model.scenarios["fam-env-1"] = [
        Reply([note(".backspace.toml", evil)]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    events = await post_run(
        shared.server.url, {"repo_url": "local:fam-env", "prompt": "fam-env-1: validate"}
    )
    assert events[-1]["status"] == "succeeded", events[-3:]
    shared.model.scenarios["fam-env-2"] = [
        Reply([ToolCall("bash", {"command": "cat .env-made"})]),
        Reply([STRIP]),
        finish("Strip"),
    ]

    _, second = await follow_up(shared, events[0]["run_id"], "fam-env-2: strip")

    assert second[-1]["status"] == "succeeded", second[-3:]
    commands = of_type(second, "Tool: Bash")
    assert not any("evil" in e["command"] for e in commands)
    [looked] = [e for e in commands if e["command"] == "cat .env-made"]
    assert looked["output"].strip() == "base-setup"
    # Verification checked the follow-up's published tree out in a fresh sandbox (the branch's
    # commits travel there too) and passed on it.
    [verified] = of_type(second, "verification")
    assert verified["passed"] is True, verified
    # The branch still has the earlier change (published for people to review), and the
    # follow-up's agent worked on the branch's head.
    branch = of_type(second, "pr_updated")[0]["branch"]
    assert git(shared.repos / "fam-env", "show", f"{branch}:.backspace.toml") == evil


async def test_follow_up_requests_are_checked_like_any_other(shared: Shared) -> None:
    first = await first_run(shared, "fam-bad", "fam-bad-1", [Reply([EDIT_SIGNUP]), finish()])
    url = f"{shared.server.url}/api/runs"
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        unknown = await client.post(f"{url}/no-such-run/followups", json={"prompt": "x"})
        mode = await client.post(
            f"{url}/{first['run_id']}/followups", json={"prompt": "x", "mode": "later"}
        )
        empty = await client.post(f"{url}/{first['run_id']}/followups", json={"prompt": " "})
        extra = await client.post(
            f"{url}/{first['run_id']}/followups", json={"prompt": "x", "repo_url": "local:other"}
        )
        control = await client.post(
            f"{url}/{first['run_id']}/followups", json={"prompt": "a\x1b[31m"}
        )
        form = await client.post(f"{url}/{first['run_id']}/followups", content=b"prompt=x")
    assert unknown.status_code == 404 and "no-such-run" in unknown.json()["detail"]
    assert mode.status_code == 422 and "mode" in mode.text
    assert empty.status_code == 422 and "prompt" in empty.text
    assert extra.status_code == 422 and "repo_url" in extra.text
    assert control.status_code == 422 and "control characters" in control.text
    assert form.status_code == 415
    runs = (await get(shared, f"/api/runs/{first['run_id']}"))["family"]["runs"]
    assert len(runs) == 1, "no refused follow-up started a run"


async def _events(shared: Shared, run_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        _, frames = await collect(client, "GET", f"{shared.server.url}/api/runs/{run_id}/events")
    return events_of(frames)


# --- the PR body's Runs table -----------------------------------------------------------------
def test_the_runs_table_keeps_what_people_wrote_around_it() -> None:
    row1 = runs_row(
        run_id="a" * 36, run_url="http://x/1", prompt="first", verification="passed", cost_usd=0.1
    )
    row2 = runs_row(
        run_id="b" * 36,
        run_url="http://x/2",
        prompt="a | b\n![x](http://evil/p.png)",
        verification="not verified",
        cost_usd=0,
    )
    body = "Summary\n\n---\nOpened by [backspace run aaaaaaaa](http://x/1) · 3 model turns"
    once = with_run(body, row1)
    assert once.index(RUNS_START) < once.index("---\nOpened by")
    edited = once.replace("Summary", "Summary, edited by a reviewer")
    twice = with_run(edited, row2)
    assert "Summary, edited by a reviewer" in twice
    table = twice[twice.index(RUNS_START) : twice.index(RUNS_END)]
    assert table.count("| [") == 2 and table.index("aaaaaaaa") < table.index("bbbbbbbb")
    assert "a \\| b" in row2 and "![x]" not in row2 and "\n" not in row2
    assert with_run("", row1).startswith(RUNS_START)
