"""Claude Code on Daytona: the REAL CLI, from a snapshot backspace makes, reaching the model only
through the gateway's network entry (/gateway/<capability>/v1/messages) on the real server.

The fake Daytona (tests/fakes/daytona.py) runs each sandbox's commands on this host, in a
directory of its own, so the real binary runs; a snapshot there is a copy of a sandbox's files.
The fake Anthropic enforces the REAL key (a canary): the CLI holds a placeholder, so a request
that reached it without passing through the gateway would be refused. The server's public URL
is a loopback one here: a real Daytona sandbox could not reach it, and the network plan says so
(a `network_blocked` event); the fake does not enforce the plan, so the run goes on.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backspace.orchestrator.engines.claude_cli import ClaudeCli
from backspace.orchestrator.engines.claude_code import PLACEHOLDER_KEY
from backspace.orchestrator.sandboxes.daytona_tools import ClaudeCodeSnapshot
from tests.conftest import git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.fakes.daytona import FakeDaytona, FakeSandbox
from tests.helpers import Shared, shared_server, workdir
from tests.scenarios import EDIT_SIGNUP, finish
from tests.sse import of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY = f"sk-ant-api03-canary-{secrets.token_hex(16)}"
DAYTONA_KEY = "dtn_CLAUDECODE0123456789"
MODEL = "claude-sonnet-4-5"
CAPABILITY = re.compile(r"/gateway/([0-9a-f]{32})")
# Split in the command, so the command's own text (which the CLI may keep) never matches.
SCAN = (
    'echo "url=$ANTHROPIC_BASE_URL"; env | grep -i anthropic | sort; '
    'grep -rlaF "sk-ant-api03-""canary" "$HOME" .. /proc/self/environ 2>/dev/null; '
    "echo scanned"
)


@pytest.fixture(scope="module", autouse=True)
def claude_code_installed() -> None:
    usable, message = ClaudeCli().check()
    assert usable, f"{message}: run scripts/bootstrap --dev"


@pytest.fixture(scope="module")
def dt() -> Iterator[FakeDaytona]:
    with FakeDaytona(api_key=DAYTONA_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def shared(dt: FakeDaytona) -> Iterator[Shared]:
    repos = workdir("claude-code-daytona-repos")
    with (
        FakeAnthropic(scenarios={}, api_key=KEY) as model,
        shared_server(
            "claude-code-daytona",
            {
                "ANTHROPIC_API_KEY": KEY,
                "ANTHROPIC_BASE_URL": model.url,
                "BACKSPACE_LOCAL_REPOS": str(repos),
                "DAYTONA_API_KEY": DAYTONA_KEY,
                "DAYTONA_API_URL": dt.api_url,
                "BACKSPACE_INSTANCE": "cc-daytona",
                "BACKSPACE_MODEL": MODEL,
                "BACKSPACE_MODEL_RETRIES": "1",
                "BACKSPACE_MAX_COST_USD": "1.0",
            },
        ) as server,
    ):
        yield Shared(server, model, repos)


def snapshot_name() -> str:
    return ClaudeCodeSnapshot.name_for(ClaudeCli())


def sandbox_of(dt: FakeDaytona, run_id: str) -> FakeSandbox:
    (found,) = [s for s in dt.sandboxes.values() if s.labels.get("backspace.run") == run_id]
    return found


def snapshots_made(dt: FakeDaytona) -> list[str]:
    return [
        r["body"]["name"]
        for r in dt.requests
        if r["method"] == "POST" and r["path"].endswith("/snapshot") and r["status"] == 200
    ]


def requests_of(shared: Shared, key: str) -> list[dict[str, Any]]:
    return [r for r in shared.model.requests if r.get("scenario") == key]


def strip_edit(summary: str) -> list[Reply]:
    return [
        Reply([ToolCall("Bash", {"command": SCAN, "description": "look around"})]),
        Reply(
            [
                ToolCall(
                    "Bash",
                    {
                        "command": "sed -i 's/    return name$/    return name.strip()/' app.py"
                        " && cat app.py",
                        "description": "edit",
                    },
                )
            ]
        ),
        Reply([Text(f"Done.\n\nPR title: {summary}\nPR body:\nStrips whitespace.")]),
    ]


async def gateway_post(shared: Shared, capability: str) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        return await client.post(
            f"{shared.server.url}/gateway/{capability}/v1/messages",
            json=body,
            headers={"x-api-key": "anything", "anthropic-version": "2023-06-01"},
        )


async def test_two_runs_share_the_snapshot_and_their_capabilities_die_with_them(
    shared: Shared, dt: FakeDaytona
) -> None:
    origin = make_repo(shared.repos, "ccd-whole")
    shared.model.scenarios["ccd-one"] = strip_edit("Strip the signup name")
    events = await post_run(
        shared.server.url,
        {"repo_url": "local:ccd-whole", "prompt": "ccd-one: strip", "engine": "claude-code"},
    )
    assert events[-1]["status"] == "succeeded", json.dumps(events[-8:])[-3000:]
    created = of_type(events, "pr_created")[0]
    assert created["title"] == "Strip the signup name"
    assert git(origin, "diff", "--name-only", "main", created["branch"]).split() == ["app.py"]
    assert "return name.strip()" in git(origin, "show", f"{created['branch']}:app.py")

    # The CLI came from the snapshot backspace made, once, and ran in the run's sandbox.
    name = snapshot_name()
    assert snapshots_made(dt) == [name]
    first = sandbox_of(dt, events[0]["run_id"])
    assert first.params.get("snapshot") == name and first.env == {} and first.deleted

    # The CLI reached the model through a capability URL on the public server, with the
    # placeholder; the real key only in the gateway's header to the fake.
    scan = next(e for e in of_type(events, "Tool: Bash") if e["command"] == SCAN)
    found = CAPABILITY.search(scan["output"])
    assert found, scan["output"]
    capability = found.group(1)
    assert f"url={shared.server.url}/gateway/{capability}" in scan["output"]
    assert f"ANTHROPIC_API_KEY={PLACEHOLDER_KEY}" in scan["output"]
    assert scan["output"].rstrip().endswith("scanned")
    assert "sk-ant-api03-canary" not in scan["output"]  # no file, no environ holds the key
    sent = requests_of(shared, "ccd-one")
    assert len(sent) == 3 and all(r["headers"]["x-api-key"] == KEY for r in sent)
    assert all(KEY not in json.dumps(r["body"]) for r in sent)
    assert KEY not in json.dumps(events) and KEY not in shared.server.logs()
    assert capability not in shared.server.logs()
    costs = [e["cost_usd"] for e in of_type(events, "usage")]
    assert costs and costs == sorted(costs) and costs[-1] > 0  # counted by the gateway

    # The public URL's host is planned for the agent phase like any host: a loopback one is
    # no address a Daytona sandbox may reach, and the run says so.
    blocked = of_type(events, "network_blocked")
    assert any(e["host"] == "127.0.0.1" and "loopback" in e["reason"] for e in blocked), blocked

    # The capability died with the run: 404, and nothing reaches the model.
    before = len(shared.model.requests)
    after = await gateway_post(shared, capability)
    assert after.status_code == 404, after.text
    assert after.json()["error"]["type"] == "not_found_error"

    # A second run: the same snapshot (not made again), its own capability; the first run's,
    # tried from inside the second run's sandbox, is refused.
    make_repo(shared.repos, "ccd-again")
    old = f"{shared.server.url}/gateway/{capability}/v1/messages"
    # The old capability; then this run's own with a body past the gateway's 32 MiB cap.
    probe = (
        f"curl -s -o /dev/null -w 'old=%{{http_code}}\\n' -X POST -H 'content-type: "
        f"application/json' -d '{{}}' {old}; echo \"now=$ANTHROPIC_BASE_URL\"; "
        "head -c 33554433 /dev/zero | curl -s -o /dev/null -w 'big=%{http_code}\\n' -X POST "
        '--data-binary @- "$ANTHROPIC_BASE_URL/v1/messages"'
    )
    shared.model.scenarios["ccd-two"] = [
        Reply([ToolCall("Bash", {"command": probe, "description": "probe"})]),
        *strip_edit("Strip again"),
    ]
    again = await post_run(
        shared.server.url,
        {"repo_url": "local:ccd-again", "prompt": "ccd-two: strip", "engine": "claude-code"},
    )
    assert again[-1]["status"] == "succeeded", [
        (e["type"], e.get("message"), e.get("error")) for e in again[-8:]
    ]
    assert snapshots_made(dt) == [name]  # made once, reused
    assert sandbox_of(dt, again[0]["run_id"]).params.get("snapshot") == name
    output = next(e for e in of_type(again, "Tool: Bash") if e["command"] == probe)["output"]
    assert "old=404" in output and "big=413" in output, output
    second = CAPABILITY.search(output)
    assert second and second.group(1) != capability
    assert len(shared.model.requests) == before + 4  # the second run's own four turns only


async def test_a_wrong_capability_gets_404_and_starts_nothing(shared: Shared) -> None:
    before = len(shared.model.requests)
    for capability in (secrets.token_hex(16), "0" * 32, "x", secrets.token_hex(64)):
        answer = await gateway_post(shared, capability)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["type"] == "not_found_error"
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        # Only the Messages API's paths are routed at all.
        other = await client.post(
            f"{shared.server.url}/gateway/{secrets.token_hex(16)}/v1/complete", json={}
        )
    assert other.status_code == 404
    assert len(shared.model.requests) == before


async def test_a_layer_without_the_cli_gets_it_uploaded(shared: Shared, dt: FakeDaytona) -> None:
    """An environment snapshot made by a backspace-engine run has no CLI: a Claude Code run
    started from it gets the binary uploaded into its sandbox and runs."""
    toml = "[setup]\nrun = 'echo set-up >> ~/setup-count'\n"
    files = {"app.py": "def signup(name):\n    return name\n", ".backspace.toml": toml}
    make_repo(shared.repos, "ccd-layer", files=files)
    shared.model.scenarios["ccd-plain"] = [Reply([EDIT_SIGNUP]), finish()]
    plain = await post_run(
        shared.server.url, {"repo_url": "local:ccd-layer", "prompt": "ccd-plain: look"}
    )
    assert plain[-1]["status"] == "succeeded", plain[-4:]
    layers = [n for n in dt.live_snapshots() if n.startswith("backspace-env-")]
    assert layers, "the backspace-engine run kept its environment"
    shared.model.scenarios["ccd-onlayer"] = strip_edit("Strip on a layer")
    events = await post_run(
        shared.server.url,
        {"repo_url": "local:ccd-layer", "prompt": "ccd-onlayer: strip", "engine": "claude-code"},
    )
    assert events[-1]["status"] == "succeeded", json.dumps(events[-8:])[-3000:]
    sandbox = sandbox_of(dt, events[0]["run_id"])
    assert sandbox.params.get("snapshot") in layers  # the layer, not the CLI snapshot
    assert any("Using the cached environment" in e.get("message", "") for e in events)
    uploads = [
        r
        for r in dt.requests
        if r["path"].endswith("/files/bulk-upload")
        and any("claude-code" in f for f in (r["body"] or {}).get("files", []))
        and sandbox.id in r["path"]
    ]
    assert len(uploads) == 1, [r["path"] for r in dt.requests if "upload" in r["path"]][-5:]


async def test_the_spend_limit_holds_over_the_network(shared: Shared, dt: FakeDaytona) -> None:
    """BACKSPACE_MAX_COST_USD=1.0: one turn of 400k input tokens ($1.20) spends it; the lease
    behind the capability refuses the next request and the run ends cost_limit. The CLI's
    snapshot was deleted behind backspace's back first: the run makes it again."""
    name = snapshot_name()
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        gone = await client.delete(
            f"{dt.api_url}/snapshots/{name}", headers={"Authorization": f"Bearer {DAYTONA_KEY}"}
        )
    assert gone.status_code < 300 or gone.status_code == 404, gone.text  # 404: run alone
    made = snapshots_made(dt).count(name)
    make_repo(shared.repos, "ccd-spend")
    shared.model.scenarios["ccd-spend"] = [
        Reply(
            [ToolCall("Bash", {"command": "echo looking"})],
            usage={"input_tokens": 400_000, "output_tokens": 10},
        ),
        Reply([ToolCall("Bash", {"command": "echo never"})]),
    ]
    events = await post_run(
        shared.server.url,
        {"repo_url": "local:ccd-spend", "prompt": "ccd-spend: look", "engine": "claude-code"},
    )
    error = of_type(events, "error")[0]
    assert events[-1]["status"] == "failed" and error["code"] == "cost_limit", error
    assert len(requests_of(shared, "ccd-spend")) == 1  # the second never reached the model
    assert not [e for e in of_type(events, "Tool: Bash") if e["command"] == "echo never"]
    assert snapshots_made(dt).count(name) == made + 1  # made again, once
    assert sandbox_of(dt, events[0]["run_id"]).params.get("snapshot") == name
