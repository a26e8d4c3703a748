"""Hostile input end to end, through the real server: rate limits per key and per address,
bodies and prompts that are too big or malformed, shell metacharacters, repository-reference
attacks, path traversal and symlinks through the editor, malformed Slack payloads, and every
secret the server knows kept out of every place a person or the agent can see.

Each case checks the answer (a 4xx with a `detail` that names the problem, never a 5xx), that
nothing was started (no run row, no model call, no git host call) and that nothing ran."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import hmac
import json
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import ServerFactory, git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.fakes.github import FakeGitHub
from tests.fakes.slack import FakeSlack, SlackSigner, send
from tests.helpers import REFUSED, Shared, shared_rig
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import collect, events_of, of_type, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ANTHROPIC_KEY = "sk-ant-api03-hostile-key-0123456789"
PWNED = f"pwned-{uuid.uuid4().hex[:10]}"  # a file name no honest run ever creates
FORM = "application/x-www-form-urlencoded"
SLACK_SECRET = "slack-signing-secret-hostile-0123"
SLACK_BOT = "xoxb-hostile-bot-token-000"


def base_env(repos: Path, model: FakeAnthropic, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        **extra,
    }


def pwned_files() -> list[str]:
    return glob.glob(f"/tmp/{PWNED}*") + glob.glob(f"/tmp/*/{PWNED}*")


async def list_runs(server: Server, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        response = await client.get(f"{server.url}/api/runs", headers=headers or {})
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["runs"]
    return runs


def assert_no_server_error(server: Server) -> None:
    """The server is up and logged no unhandled exception."""
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=5, verify=TLS).status_code == 200
    log = server.logs()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert "Failed to run a middleware function" not in log, log[-3000:]
    assert "Failed to run listener function" not in log, log[-3000:]


# --- 1. rate limits -------------------------------------------------------------------------------
def from_address(address: str) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any of 127.0.0.0/8 on Linux)."""
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=address, verify=TLS), timeout=15
    )


async def test_rate_limits_are_separate_buckets_per_api_key_and_per_address(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    fake_model.scenarios["rate-hostile"] = [finish()]
    server = server_factory(
        base_env(repos, fake_model, BACKSPACE_RUNS_PER_MINUTE="1", BACKSPACE_RUNS_BURST="2")
    )
    body = {"repo_url": "local:widgets", "prompt": "rate-hostile"}
    refusals: list[httpx.Response] = []

    async def start(address: str, key: str | None = None, **headers: str) -> int:
        if key is not None:
            headers["X-API-Key"] = key
        async with from_address(address) as client:
            response = await client.post(
                f"{server.url}/api/code",
                json=body,
                headers={"Accept": "application/json", **headers},
            )
        if response.status_code == 429:
            refusals.append(response)
        return response.status_code

    async def starts(n: int, address: str, key: str | None = None, **headers: str) -> list[int]:
        return [await start(address, key, **headers) for _ in range(n)]

    # Address A with key K1: the burst of 2, then 429.
    assert await starts(3, "127.0.0.2", "key-one") == [202, 202, 429]
    # The same address with another key: the address's bucket is empty.
    assert await start("127.0.0.2", "key-two") == 429
    # Another address with the exhausted key (as a Bearer token this time): the key's bucket.
    assert await start("127.0.0.3", Authorization="Bearer key-one") == 429
    # That address with the other key: both buckets are fresh, since a refused request spends
    # nothing; a whole burst.
    assert await starts(3, "127.0.0.3", "key-two") == [202, 202, 429]
    # Without a key, only the address counts; a forwarded-for header from a client that is not
    # a trusted proxy opens no new bucket.
    assert await starts(3, "127.0.0.4") == [202, 202, 429]
    assert await start("127.0.0.4", **{"X-Forwarded-For": "10.1.2.3"}) == 429
    # Requests that would not start a run spend nothing.
    async with from_address("127.0.0.5") as client:
        bad = await client.post(f"{server.url}/api/code", json={"repo_url": "local:widgets"})
    assert bad.status_code == 422
    assert await starts(3, "127.0.0.5", "key-three") == [202, 202, 429]

    for refusal in refusals:
        assert 1 <= int(refusal.headers["retry-after"]) <= 61
        assert "BACKSPACE_RUNS_PER_MINUTE" in refusal.json()["detail"]
    assert len(await list_runs(server)) == 8
    assert_no_server_error(server)


# --- 2 and 4. bodies, prompts and repository references through POST /api/code --------------
@dataclass
class Api:
    server: Server
    model: FakeAnthropic
    github: FakeGitHub
    slack: FakeSlack


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One server for the many refused requests, through the API and through Slack (section
    6): none of them may start anything."""
    base = tmp_path_factory.mktemp("hostile-api")
    repos = base / "repos"
    repos.mkdir()
    make_repo(repos, "widgets")
    make_repo(base, "outside")
    (repos / "plain").mkdir()
    (repos / "escape").symlink_to(base / "outside")
    with (
        FakeAnthropic(scenarios={}) as model,
        FakeGitHub(token="ghp_HOSTILEAPI000000000000000000000000") as github,
        FakeSlack(token=SLACK_BOT) as slack,
    ):
        github.create_repo("acme/widgets", files={"app.py": "x = 1\n"})
        env = base_env(
            repos,
            model,
            BACKSPACE_MAX_PROMPT_CHARS="500",
            BACKSPACE_MAX_BODY_BYTES="8192",  # of POST /api/code; Slack has limits of its own
            GITHUB_TOKEN=github.token,
            GITHUB_API_URL=github.api_url,
            GITHUB_WEB_HOST="github.com",
            SLACK_BOT_TOKEN=SLACK_BOT,
            SLACK_SIGNING_SECRET=SLACK_SECRET,
            SLACK_API_URL=slack.api_url,
        )
        server = start_server(base / "server", env)
        try:
            yield Api(server, model, github, slack)
        finally:
            server.stop()


@pytest.fixture
def quiet(api: Api) -> Iterator[Api]:
    """After each case: no run, no model call, no git host call, nothing executed, no 5xx."""
    yield api
    runs = httpx.get(f"{api.server.url}/api/runs", timeout=5, verify=TLS).json()["runs"]
    assert runs == []
    assert api.model.requests == []
    assert api.github.requests == []
    assert pwned_files() == []
    assert_no_server_error(api.server)


def _prompt(prompt: Any, repo: str = "local:widgets") -> dict[str, Any]:
    return {"repo_url": repo, "prompt": prompt}


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]


@dataclass
class Bad:
    name: str
    body: Any  # bytes are sent as they are; anything else as JSON
    status: int
    says: tuple[str, ...] = ()
    field: str | None = None
    content_type: str = "application/json"
    chunked: bool = False


BIG = json.dumps(_prompt("x" * 9000)).encode()
BAD_BODIES: list[Bad] = [
    Bad("over the size limit", BIG, 413, ("larger than 8192 bytes",)),
    Bad("over the size limit, chunked", BIG, 413, ("larger than 8192 bytes",), chunked=True),
    Bad("prompt over the limit", _prompt("y" * 501), 422,
        ("prompt", "501 characters", "500", "BACKSPACE_MAX_PROMPT_CHARS"), "prompt"),
    Bad("empty prompt", _prompt(""), 422, ("prompt",), "prompt"),
    Bad("whitespace prompt", _prompt(" \n\t\r "), 422, ("prompt",), "prompt"),
    Bad("form-encoded", b"repo_url=local%3Awidgets&prompt=x", 415, ("application/json",),
        content_type=FORM),
    Bad("plain text", b"fix the signup form", 415, ("application/json",), content_type="text/plain"),
    Bad("a JSON string", b'"fix it"', 422, ("JSON object",)),
    Bad("a JSON number", b"42", 422, ("JSON object",)),
    Bad("JSON null", b"null", 422, ("JSON object",)),
    Bad("a JSON array", b'[{"repo_url": "local:widgets", "prompt": "x"}]', 422, ("JSON object",)),
    Bad("prompt is a number", _prompt(5), 422, ("prompt", "string"), "prompt"),
    Bad("prompt is a list", _prompt(["fix", "it"]), 422, ("prompt", "string"), "prompt"),
    Bad("prompt is an object", _prompt({"text": "x"}), 422, ("prompt", "string"), "prompt"),
    Bad("prompt is null", _prompt(None), 422, ("prompt", "string"), "prompt"),
    Bad("prompt is true", _prompt(True), 422, ("prompt", "string"), "prompt"),
    Bad("prompt is NaN", b'{"repo_url": "local:widgets", "prompt": NaN}', 422, ("prompt",), "prompt"),
    Bad("repo_url is a list", {"repo_url": ["local:widgets"], "prompt": "x"}, 422,
        ("repo_url",), "repo_url"),
    Bad("base_branch is a number", {**_prompt("x"), "base_branch": 7}, 422,
        ("base_branch",), "base_branch"),
    Bad("co_author is an object", {**_prompt("x"), "co_author": {"name": "x"}}, 422,
        ("co_author",), "co_author"),
    Bad("unknown field", {**_prompt("x"), "model": "gpt"}, 422, ("model",), "model"),
    Bad("prototype pollution", {**_prompt("x"), "__proto__": {"admin": True}}, 422,
        ("__proto__",), "__proto__"),
    Bad("differently cased field", {"repo_url": "local:widgets", "Prompt": "x"}, 422,
        ("prompt",), "prompt"),
    Bad("invalid UTF-8", b'{"repo_url": "local:widgets", "prompt": "\xff\xfe fix"}', 400,
        ("not valid JSON",)),
    Bad("a lone surrogate", b'{"repo_url": "local:widgets", "prompt": "fix \\ud800 it"}', 422,
        ("prompt",), "prompt"),
    Bad("NUL in the prompt", _prompt("fix\x00 it"), 422, ("prompt", "control characters"),
        "prompt"),
    Bad("an escape sequence in the prompt", _prompt("\x1b[2J\x1b[31mfix it"), 422,
        ("prompt", "control characters"), "prompt"),
    Bad("a backspace in the prompt", _prompt("fix\x08\x08it"), 422,
        ("prompt", "control characters"), "prompt"),
    Bad("NUL in co_author", {**_prompt("x"), "co_author": "Ada\x00 <ada@example.com>"}, 422,
        ("co_author",), "co_author"),
    Bad("NUL in base_branch", {**_prompt("x"), "base_branch": "main\x00"}, 422,
        ("base_branch",), "base_branch"),
    Bad("deeply nested JSON", b"[" * 3000 + b"]" * 3000, 400, ("not valid JSON",)),
    Bad("a 4400-digit number", b'{"repo_url": "local:widgets", "prompt": ' + b"9" * 4400 + b"}",
        400, ("not valid JSON",)),
    Bad("overlong repo_url", {"repo_url": "local:" + "w" * 2000, "prompt": "x"}, 422,
        ("repo_url",), "repo_url"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_BODIES, ids=[b.name for b in BAD_BODIES])
async def test_a_bad_body_gets_a_clear_4xx_and_starts_nothing(quiet: Api, bad: Bad) -> None:
    data = bad.body if isinstance(bad.body, bytes) else json.dumps(bad.body).encode()
    headers = {"content-type": bad.content_type, "accept": "application/json"}
    async with httpx.AsyncClient(verify=TLS, timeout=15) as client:
        response = await client.post(
            f"{quiet.server.url}/api/code",
            content=_chunked(data) if bad.chunked else data,
            headers=headers,
        )
    if bad.chunked:
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.request.headers
    assert response.status_code == bad.status, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert isinstance(answer["detail"], str)
    for fragment in bad.says:
        assert fragment in answer["detail"], answer
    if bad.field is not None:
        assert bad.field in [e["field"] for e in answer["errors"]], answer


# Attacks named in the GitHub issue, beyond the parser's own list (tests/test_references.py).
SECRET_IN_URL = "hunter2-HOSTILE-password"
TOKEN_IN_URL = "ghp_HOSTILEURLTOKEN0000000000000000000000"
REPO_ATTACKS: list[str] = [
    "https://github.com/../../etc",
    "https://github.com/acme/../../etc/passwd",
    "git@evil:acme/widgets",
    "git@evil.com:acme/widgets.git",
    f"ext::sh -c touch% /tmp/{PWNED}",
    f"ext::sh -c 'touch /tmp/{PWNED}'",
    "file:///etc",
    "file:///etc/passwd",
    f"--upload-pack=touch /tmp/{PWNED}",
    f"-oProxyCommand=touch /tmp/{PWNED}",
    "-uhttps://github.com/acme/widgets",
    f"ssh://-oProxyCommand=touch%20/tmp/{PWNED}/acme/widgets",
    "https://github.com.evil.com/acme/widgets",
    "https://evil.com/github.com/acme/widgets",
    "https://evil.com\\@github.com/acme/widgets",
    "<https://evil.com/acme/widgets|acme/widgets>",
    f"https://user:{SECRET_IN_URL}@github.com/acme/widgets",
    f"https://{TOKEN_IN_URL}@github.com/acme/widgets",
    f"https://x-access-token:{TOKEN_IN_URL}@github.com/acme/widgets.git",
    f"git@github.com:acme/widgets.git\n--upload-pack=touch /tmp/{PWNED}",
    "acme/widgets\r\nHost: evil.com",
    "acme/widgets\x00",
    "https://github.com/acme/widgets%0a--upload-pack=x",
    "https://github.com/acme/widgets/tree/$(touch%20x)",
    "https://github.com/acme/widgets/tree/main;id",
    "https://github.com/acme/widgets/tree/--upload-pack=x",
    "https://github.com:acme/widgets",
    "http://[::1]/acme/widgets",
    "http://127.0.0.1/acme/widgets",
    "a" * 40 + "/widgets",
    "acme/" + "r" * 101,
    "https://github.com/acme/widgets/" + "x" * 2000,
    "https://gіthub.com/acme/widgets",  # Cyrillic і
    "https://github.com/acme/wіdgets",  # Cyrillic і
    "ａｃｍｅ/widgets",  # fullwidth
    "https://github.com／acme／widgets",  # fullwidth solidus
    "acme/widgets\u202e",  # right-to-left override
    "acme/wid\u200bgets",  # zero-width space
    "local:../outside",
    "local:/etc",
    "local:",
    "local:-x",
    "local:widgets/../../outside",
    "local:escape",
    "local:plain",
    "local:widgets\x00",
    "/etc/passwd",
    "/",
    "widgets",
]
REPO_CASES = [
    pytest.param(r, id=f"parser-{i}")
    for i, (r, _) in enumerate(REFUSED)
    if r != "acme/widgets\n"  # accepted: a pasted trailing newline is trimmed
]
REPO_CASES += [pytest.param(r, id=f"attack-{i}") for i, r in enumerate(REPO_ATTACKS)]


@pytest.mark.parametrize("reference", REPO_CASES)
async def test_a_repository_reference_attack_gets_422_and_runs_nothing(
    quiet: Api, reference: str
) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=15) as client:
        response = await client.post(
            f"{quiet.server.url}/api/code",
            json={"repo_url": reference, "prompt": "hostile-ref: do it"},
            headers={"accept": "application/json"},
        )
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["detail"].startswith("invalid request: repo_url: "), answer
    assert len(answer["detail"]) > len("invalid request: repo_url: ") + 10
    assert [e["field"] for e in answer["errors"]] == ["repo_url"]
    for secret in (SECRET_IN_URL, TOKEN_IN_URL, "ghp_secret", "HOSTILE"):
        assert secret not in response.text


# --- 3. shell metacharacters through the whole flow ------------------------------------------
@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    """One server with the default settings for the runs of sections 3 to 5."""
    with shared_rig("hostile", base_env) as rig:
        yield rig


async def test_shell_metacharacters_in_a_prompt_reach_the_model_as_text_and_never_a_shell(
    shared: Shared,
) -> None:
    origin = make_repo(shared.repos, "meta")
    fake_model = shared.model
    prompt = (
        f"meta-hostile: fix $(touch /tmp/{PWNED}-1) ; touch /tmp/{PWNED}-2 && "
        f"`touch /tmp/{PWNED}-3` | tee /tmp/{PWNED}-4 > /tmp/{PWNED}-5\n"
        "'\"quotes\"' <script>alert(1)</script> & %s %n {{7*7}} ${IFS}\tdone"
    )
    title = f"Fix $(touch /tmp/{PWNED}-6) <script>x</script>"
    listing = "ls -a /tmp /workspace /home/agent; echo listed"
    fake_model.scenarios["meta-hostile"] = [
        Reply([ToolCall("bash", {"command": listing})]),
        Reply([EDIT_SIGNUP]),
        finish(title, f"`touch /tmp/{PWNED}-7` <img src=x onerror=alert(1)> $(id)"),
    ]
    server = shared.server
    events = await post_run(server.url, {"repo_url": "local:meta", "prompt": prompt})
    assert events[-1]["status"] == "succeeded", events[-2:]

    # Text all the way: the start event and the model's first message carry it verbatim.
    assert events[0]["prompt"] == prompt
    first = fake_model.requests_for("meta-hostile")[0]["messages"][0]["content"]
    assert prompt in "".join(block["text"] for block in first if block["type"] == "text")
    # Never a shell: nothing was created, on the host or in the sandbox.
    output = of_type(events, "Tool: Bash")[0]["output"]
    assert "listed" in output and PWNED not in output
    assert pwned_files() == []

    # The branch is a safe slug; the title and body are stored as text and shown escaped.
    pr = of_type(events, "pr_created")[0]
    branch = pr["branch"]
    assert re.fullmatch(r"backspace/[a-z0-9]+(-[a-z0-9]+)*-[0-9a-f]{8}", branch), branch
    git(origin, "check-ref-format", "--branch", branch)
    # Markup in them reads the same but is broken by invisible U+200B (no HTML on GitHub).
    subject = git(origin, "log", "-1", "--format=%s", branch).strip()
    assert subject == pr["title"] and "<script>" not in subject
    assert pr["title"].replace("\u200b", "") == title
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        page = (await client.get(pr["pr_url"])).text
        record = (await client.get(pr["pr_url"].replace("/prs/", "/api/prs/"))).json()
    assert "<script>" not in page and "<img" not in page
    shown = page.replace("\u200b", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "&lt;img src=x" in shown
    assert record["title"] == pr["title"] and f"touch /tmp/{PWNED}-1" in record["body"]
    assert pwned_files() == []


async def test_control_characters_from_the_model_never_break_the_commit(
    shared: Shared,
) -> None:
    """The model's title is untrusted text too: NUL, escapes and newlines are dropped from it."""
    origin = make_repo(shared.repos, "control")
    fake_model = shared.model
    fake_model.scenarios["ctl-title-hostile"] = [
        Reply([EDIT_SIGNUP]),
        finish("Fix\x00 the\x1b[31m signup\r form\x07", "Body\x00 with a NUL."),
    ]
    fake_model.scenarios["ctl-none-hostile"] = [Reply([EDIT_SIGNUP]), Reply([Text("Done.")])]
    server = shared.server
    titled = await post_run(server.url, _prompt("ctl-title-hostile: fix it", "local:control"))
    untitled = await post_run(server.url, _prompt("ctl-none-hostile:\tfix\tit", "local:control"))
    for events in (titled, untitled):
        assert events[-1]["status"] == "succeeded", events[-2:]
        branch = of_type(events, "pr_created")[0]["branch"]
        subject = git(origin, "log", "-1", "--format=%s", branch).strip()
        assert not re.search(r"[\x00-\x1f\x7f]", subject), subject
    assert of_type(titled, "pr_created")[0]["title"] == "Fix the[31m signup"
    assert of_type(untitled, "pr_created")[0]["title"] == "ctl-none-hostile: fix it"


# --- 5. path traversal and symlinks through the editor tool ------------------------------------
def _edit(command: str, path: str, **fields: Any) -> Reply:
    return Reply(
        [ToolCall("str_replace_based_edit_tool", {"command": command, "path": path, **fields})]
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host_secret(tmp_path: Path) -> Iterator[Path]:
    """A host file outside the sandbox, with contents that must never reach an event."""
    path = tmp_path / "host-only" / "secret.txt"
    path.parent.mkdir()
    path.write_text(f"HOSTONLY-{uuid.uuid4().hex}\n")
    yield path


async def test_editor_traversal_and_symlinks_never_reach_a_host_file(
    shared: Shared, host_secret: Path
) -> None:
    origin = make_repo(shared.repos, "editor")
    fake_model = shared.model
    passwd = Path("/etc/passwd")
    before = {host_secret: _sha(host_secret), passwd: _sha(passwd)}
    up = "../" * 12 + str(host_secret).lstrip("/")
    links = (
        f"ln -s {host_secret} leak.txt && ln -s {up} up.txt && ln -s /etc/passwd pw "
        "&& ln -s app.py alias.py && ls -l"
    )
    fake_model.scenarios["editor-hostile"] = [
        _edit("view", "../../etc/passwd"),
        _edit("view", "/etc/passwd"),
        _edit("create", "../" * 8 + str(host_secret).lstrip("/"), file_text="overwritten\n"),
        _edit("create", str(host_secret), file_text="overwritten\n"),
        _edit("str_replace", "/workspace/../etc/passwd", old_str="root", new_str="toor"),
        Reply([ToolCall("bash", {"command": links})]),
        _edit("view", "leak.txt"),
        _edit("view", "up.txt"),
        _edit("create", "leak.txt", file_text="overwritten\n"),
        _edit("str_replace", "up.txt", old_str="a", new_str="b"),
        _edit("insert", "pw", insert_line=0, new_str="evil::0:0::/:/bin/sh\n"),
        _edit("create", "pw", file_text="evil::0:0::/:/bin/sh\n"),
        Reply([ToolCall("bash", {"command": f"cat leak.txt up.txt {host_secret}; echo cat-done"})]),
        Reply([ToolCall("bash", {"command": "rm -f leak.txt up.txt pw"})]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    server = shared.server
    events = await post_run(server.url, _prompt("editor-hostile: look around", "local:editor"))
    assert events[-1]["status"] == "succeeded", events[-2:]

    edits = [e for e in events if e["type"] in ("Tool: Read", "Tool: Edit", "Tool: Write")]
    refused = [e for e in edits if e.get("error")]
    # Every traversal and every write through a link failed (and said why); the run went on.
    assert len(refused) == 11, [(e["filepath"], e.get("error")) for e in edits]
    assert all("outside the repository" in e["error"] for e in refused[:5]), refused[:5]
    sent_back = json.dumps(fake_model.requests_for("editor-hostile"))
    for place in (json.dumps(events), server.logs(), sent_back):
        where = place.find("HOSTONLY")
        assert where == -1, place[max(0, where - 300) : where + 100]
    assert "cat-done" in of_type(events, "Tool: Bash")[1]["output"]
    assert {p: _sha(p) for p in before} == before, "no host file changed"

    # The published branch: the edit and a symlink inside the repository, nothing else.
    branch = of_type(events, "pr_created")[0]["branch"]
    tree = git(origin, "ls-tree", branch).splitlines()
    assert [line.split()[0] + " " + line.split("\t")[1] for line in tree] == [
        "100644 README.md", "120000 alias.py", "100644 app.py",
    ]  # fmt: skip
    assert git(origin, "cat-file", "blob", f"{branch}:alias.py") == "app.py"


async def test_a_change_with_a_symlink_out_of_the_repository_is_not_published(
    shared: Shared, host_secret: Path
) -> None:
    origin = make_repo(shared.repos, "symlinks")
    fake_model = shared.model
    targets = {
        "passwd-link": "/etc/passwd",
        "host-link": str(host_secret),
        "docs/up-link": "../../outside/x",
        # a chain: each link alone stays inside, together they lead out
        "docs/loop": "..",
        "chained": "docs/loop/../..",
    }
    script = "mkdir -p docs && " + " && ".join(f"ln -s {t} {n}" for n, t in targets.items())
    fake_model.scenarios["symlink-out-hostile"] = [
        Reply([ToolCall("bash", {"command": script})]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    server = shared.server
    events = await post_run(server.url, _prompt("symlink-out-hostile: add links", "local:symlinks"))
    error = of_type(events, "error")[0]
    assert error["code"] == "symlink_outside_repository" and error["stage"] == "validating"
    for name in targets:
        # `docs/loop` alone stays inside the repository; only the chain through it leaves
        assert (f"{name} -> " in error["message"]) is (name != "docs/loop"), error["message"]
    assert events[-1]["status"] == "failed"
    assert of_type(events, "pr_created") == []
    assert git(origin, "branch", "--list").split() == ["*", "main"]
    assert host_secret.read_text() not in json.dumps(events)


# --- 6. malformed Slack payloads -----------------------------------------------------------------
@dataclass
class SlackApi:
    server: Server
    slack: FakeSlack
    signer: SlackSigner
    model: FakeAnthropic


@pytest.fixture(scope="module")
def slack_api(api: Api) -> SlackApi:
    """The refusing server of sections 2 and 4 (its prompt limit is 500 characters too)."""
    return SlackApi(api.server, api.slack, SlackSigner(SLACK_SECRET), api.model)


def _signed_headers(body: bytes, content_type: str) -> dict[str, str]:
    """Slack's v0 signature computed by hand (for bodies the SDK's signer cannot decode)."""
    ts = str(int(time.time()))
    digest = hmac.new(SLACK_SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
    }


@dataclass
class SlackCase:
    name: str
    build: Any  # (SlackApi, response_url) -> (body, content type)
    status: int | tuple[int, ...] = 200
    says: str | None = None  # in the immediate answer, or in what reached the response_url
    posted: str | None = None  # in a message posted to the channel


def _slash(s: SlackApi, url: str, drop: str = "", **fields: str) -> tuple[bytes, str]:
    form = {
        "token": "t", "team_id": "T0001", "team_domain": "fake", "channel_id": "C0HOSTILE",
        "channel_name": "hostile", "user_id": "U1", "user_name": "ada", "command": "/backspace",
        "text": "local:widgets slack-hostile: fix it", "api_app_id": "A1",
        "response_url": url, "trigger_id": "1.2.3",
    }  # fmt: skip
    form.update(fields)
    form.pop(drop, None)
    return urlencode(form).encode(), FORM


def _action(s: SlackApi, url: str, drop: str = "", **fields: Any) -> tuple[bytes, str]:
    payload = s.signer.block_action_payload(
        action_id="backspace_cancel", value=str(uuid.uuid4()), channel_id="C0HOSTILE",
        response_url=url,
    )  # fmt: skip
    payload.update(fields)
    payload.pop(drop, None)
    return urlencode({"payload": json.dumps(payload)}).encode(), FORM


def _event(s: SlackApi, event: Any, drop: str = "") -> tuple[bytes, str]:
    envelope = json.loads(s.signer.event_body({}, event_id=f"Ev-{uuid.uuid4().hex[:8]}"))
    envelope["event"] = event
    envelope.pop(drop, None)
    return json.dumps(envelope).encode(), "application/json"


def _mention(**fields: Any) -> dict[str, Any]:
    event = {
        "type": "app_mention", "user": "U1", "channel": "C0HOSTILE",
        "ts": f"{time.time():.6f}", "text": "<@U0BOT> local:widgets slack-hostile: fix it",
    }  # fmt: skip
    event.update(fields)
    return {k: v for k, v in event.items() if v is not None}


SLACK_CASES: list[SlackCase] = [
    SlackCase("slash without text", lambda s, u: _slash(s, u, drop="text"), says="/backspace repo"),
    SlackCase("slash without channel_id", lambda s, u: _slash(s, u, drop="channel_id"),
              says="channel"),
    SlackCase("slash without user_id", lambda s, u: _slash(s, u, drop="user_id"), says="user"),
    SlackCase("an unknown command", lambda s, u: _slash(s, u, command="/deploy"),
              says="/backspace"),
    SlackCase("10 kB of text", lambda s, u: _slash(s, u, text="local:widgets " + "x" * 10_000),
              says="500 characters"),
    SlackCase("NUL in the text", lambda s, u: _slash(s, u, text="local:widgets fix\x00 it"),
              says="control characters"),
    SlackCase("payload is not JSON", lambda s, u: (urlencode({"payload": "{nope"}).encode(), FORM),
              400),
    SlackCase("payload is a JSON array", lambda s, u: (urlencode({"payload": "[1]"}).encode(), FORM),
              400),
    SlackCase("payload is a JSON string",
              lambda s, u: (urlencode({"payload": '"x"'}).encode(), FORM), 400),
    SlackCase("block_actions without actions", lambda s, u: _action(s, u, drop="actions"), 400),
    SlackCase("block_actions with no action", lambda s, u: _action(s, u, actions=[]), 400),
    SlackCase("actions is not a list", lambda s, u: _action(s, u, actions="cancel"), 400),
    SlackCase("an action that is not an object", lambda s, u: _action(s, u, actions=["x"]), 400),
    SlackCase("an unknown action_id",
              lambda s, u: _action(s, u, actions=[{"action_id": "deploy", "value": "x",
                                                   "block_id": "b", "type": "button"}]),
              (200, 404)),
    SlackCase("cancel a value that is no run id",
              lambda s, u: _action(s, u, actions=[{"action_id": "backspace_cancel",
                                                   "value": "'; DROP TABLE runs; --",
                                                   "block_id": "b", "type": "button"}]),
              says="I do not know that run"),
    SlackCase("cancel a run that does not exist", lambda s, u: _action(s, u),
              says="I do not know that run"),
    SlackCase("cancel with a value that is an object",
              lambda s, u: _action(s, u, actions=[{"action_id": "backspace_cancel",
                                                   "value": {"id": 1},
                                                   "block_id": "b", "type": "button"}]),
              says="I do not know that run"),
    SlackCase("cancel without a user", lambda s, u: _action(s, u, drop="user"),
              says="I do not know that run"),
    SlackCase("interactive payload sent as JSON",
              lambda s, u: (json.dumps(s.signer.block_action_payload(
                  "backspace_cancel", "x", response_url=u)).encode(), "application/json"),
              (200, 400)),
    SlackCase("event_callback without an event", lambda s, u: _event(s, {}, drop="event"), 400),
    SlackCase("event is null", lambda s, u: _event(s, None), 400),
    SlackCase("event is a list", lambda s, u: _event(s, [1, 2]), 400),
    SlackCase("app_mention without text", lambda s, u: _event(s, _mention(text=None)),
              posted="/backspace repo"),
    SlackCase("app_mention without channel", lambda s, u: _event(s, _mention(channel=None))),
    SlackCase("app_mention without user", lambda s, u: _event(s, _mention(user=None))),
    SlackCase("app_mention text is an object",
              lambda s, u: _event(s, _mention(text={"t": "local:widgets x"})),
              posted="/backspace repo"),
    SlackCase("app_mention with 10 kB of text",
              lambda s, u: _event(s, _mention(text="local:widgets " + "x" * 10_000)),
              posted="500 characters"),
    SlackCase("url_verification",
              lambda s, u: (s.signer.url_verification_body("chal-hostile"), "application/json"),
              says="chal-hostile"),
    SlackCase("a JSON array", lambda s, u: (b"[1, 2, 3]", "application/json"), 400),
    SlackCase("a JSON string", lambda s, u: (b'"x"', "application/json"), 400),
    SlackCase("broken JSON", lambda s, u: (b'{"type": ', "application/json"), 400),
    SlackCase("deeply nested JSON", lambda s, u: (b"[" * 5000 + b"]" * 5000, "application/json"),
              400),
    SlackCase("a 5000-digit number",
              lambda s, u: (b'{"type": "event_callback", "n": ' + b"7" * 5000 + b"}",
                            "application/json"), 400),
    SlackCase("invalid UTF-8", lambda s, u: (b"command=%2Fbackspace&text=\xff\xfe", FORM), 400),
    SlackCase("an unknown type", lambda s, u: (b'{"type": "weird"}', "application/json"),
              (200, 404)),
    SlackCase("an empty body", lambda s, u: (b"", FORM), (200, 400, 404)),
]  # fmt: skip


@pytest.mark.parametrize("case", SLACK_CASES, ids=[c.name for c in SLACK_CASES])
async def test_a_malformed_slack_request_never_gets_a_5xx_and_starts_nothing(
    slack_api: SlackApi, case: SlackCase
) -> None:
    s = slack_api
    url = s.slack.response_url("C0HOSTILE", "U1")
    body, content_type = case.build(s, url)
    async with httpx.AsyncClient(verify=TLS, timeout=15) as client:
        response = await client.post(
            f"{s.server.url}/slack/events",
            content=body,
            headers=_signed_headers(body, content_type),
        )
        unsigned = await client.post(
            f"{s.server.url}/slack/events",
            content=body,
            headers={"Content-Type": content_type},
        )
        odd_clock = await client.post(
            f"{s.server.url}/slack/events",
            content=body,
            headers={
                **_signed_headers(body, content_type),
                "X-Slack-Request-Timestamp": "soon",
            },
        )
    statuses = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert unsigned.status_code == 401, "without a signature: refused before anything is parsed"
    assert odd_clock.status_code == 401, "a timestamp that is not a number: refused"
    rid = url.rsplit("/", 1)[1]

    def told() -> str:
        replies = [r for r in s.slack.responses if r["id"] == rid]
        return response.text + json.dumps([r["payload"] for r in replies])

    def posted() -> str:
        return json.dumps([c["args"].get("text") for c in s.slack.calls_to("chat.postMessage")])

    says, post = case.says, case.posted
    if says is not None:
        await s.slack.wait_until(lambda: says in told(), timeout=10)
    if post is not None:
        await s.slack.wait_until(lambda: post in posted(), timeout=10)
    await asyncio.sleep(0.2)  # a run is created before the answer; a little margin anyway
    assert await list_runs(s.server) == []
    assert s.model.requests == []
    assert_no_server_error(s.server)


async def test_in_socket_mode_a_request_signed_with_bolts_placeholder_secret_is_refused(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    """Without SLACK_SIGNING_SECRET, Bolt verifies with the public placeholder
    "socket-mode-only": anyone could sign with it. The HTTP endpoint must take nothing."""
    make_repo(repos, "widgets")
    fake_model.scenarios["socket-forged-hostile"] = [Reply([EDIT_SIGNUP]), finish()]
    with FakeSlack(token=SLACK_BOT) as slack:
        server = server_factory(
            base_env(
                repos,
                fake_model,
                SLACK_BOT_TOKEN=SLACK_BOT,
                SLACK_APP_TOKEN="xapp-1-socket-hostile-0001",
                SLACK_API_URL=slack.api_url,
            )
        )
        forger = SlackSigner("socket-mode-only")
        body = forger.slash_command_body(
            text="local:widgets socket-forged-hostile: fix it",
            response_url=slack.response_url("C1", "U1"),
        )
        async with httpx.AsyncClient(verify=TLS, timeout=15) as client:
            response = await send(client, f"{server.url}/slack/events", body, forger)
        assert response.status_code == 404 and "Socket Mode" in response.text
        await asyncio.sleep(0.5)
        assert await list_runs(server) == []
        assert fake_model.requests == []


# --- 7. every secret, the whole flow ---------------------------------------------------------------
MARK = "HOSTILE7"  # every secret below contains it, and nothing else does
SECRETS = {
    "ANTHROPIC_API_KEY": f"sk-ant-api03-{MARK}anthropic0001",
    "GITHUB_TOKEN": f"ghp_{MARK}github000000000000000000000002",
    "SLACK_BOT_TOKEN": f"xoxb-{MARK}-slackbot-0003",
    "SLACK_SIGNING_SECRET": f"{MARK}-signing-secret-0004",
    "SLACK_APP_TOKEN": f"xapp-1-{MARK}-apptoken-0005",
    "DAYTONA_API_KEY": f"dtn_{MARK}daytona0006",
    "API_KEY": f"bsk-{MARK}-service-key-0007",
}


async def test_every_secret_stays_out_of_every_event_log_message_pr_and_the_sandbox(
    fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    mark_split = f"{MARK[:4]}''{MARK[4:]}"  # the command never carries the mark itself
    probe = (
        "env; echo ---; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; "
        "git config -l --show-origin; cat .git/config; ls -la ~ /tmp; echo ---; "
        f"grep -rIl {mark_split} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
        "--exclude-dir=usr 2>/dev/null; echo probe-done"
    )
    fake_model.scenarios["secrets-hostile"] = [
        Reply([ToolCall("bash", {"command": probe})]),
        Reply([EDIT_SIGNUP]),
        finish(title="", body="Validates the name."),  # no title: the request's first line
    ]
    fake_model.api_key = SECRETS["ANTHROPIC_API_KEY"]
    auth = {"Authorization": f"Bearer {SECRETS['API_KEY']}"}
    with (
        FakeGitHub(token=SECRETS["GITHUB_TOKEN"]) as github,
        FakeSlack(token=SECRETS["SLACK_BOT_TOKEN"]) as slack,
    ):
        github.create_repo(
            "acme/widgets", files={"app.py": "def signup(name):\n    return name\n"}, private=True
        )
        server = server_factory(
            {
                **SECRETS,
                "ANTHROPIC_BASE_URL": fake_model.url,
                "GITHUB_API_URL": github.api_url,
                "GITHUB_WEB_HOST": "github.com",
                "SLACK_API_URL": slack.api_url,
                "SLACK_STATUS_INTERVAL": "0.2",
                "SLACK_POST_INTERVAL": "0.1",
                "BACKSPACE_SANDBOX": "local",
                "REQUIRE_AUTH": "true",
            }
        )
        signer = SlackSigner(SECRETS["SLACK_SIGNING_SECRET"])
        pasted = " ".join(SECRETS[k] for k in ("GITHUB_TOKEN", "SLACK_BOT_TOKEN", "API_KEY"))
        text = f"acme/widgets secrets-hostile: fix signup with {pasted} please"
        async with httpx.AsyncClient(verify=TLS, timeout=15) as client:
            ack = await send(
                client,
                f"{server.url}/slack/events",
                signer.slash_command_body(
                    text=text, channel_id="C0SECRETS",
                    response_url=slack.response_url("C0SECRETS", "U1"),
                ),
                signer,
                content_type=FORM,
            )  # fmt: skip
            assert ack.status_code == 200 and "Started run" in ack.json()["text"], ack.text
            # Errors that quote what was sent: a secret in a reference, over HTTP and Slack.
            echo_http = await client.post(
                f"{server.url}/api/code",
                json={"repo_url": f"https://github.com/{SECRETS['GITHUB_TOKEN']}/x", "prompt": "x"},
                headers=auth,
            )
            echo_slack = await send(
                client,
                f"{server.url}/slack/events",
                signer.slash_command_body(
                    text=f"https://github.com/{SECRETS['GITHUB_TOKEN']}/x fix",
                    channel_id="C0SECRETS",
                ),
                signer,
                content_type=FORM,
            )
            assert echo_http.status_code == 422 and echo_slack.status_code == 200
            deadline = time.monotonic() + 60
            while True:
                (run,) = (await client.get(f"{server.url}/api/runs", headers=auth)).json()["runs"]
                if run["status"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline, run
                await asyncio.sleep(0.1)
            _, frames = await collect(
                client, "GET", f"{server.url}/api/runs/{run['id']}/events", headers=auth
            )
        await slack.wait_until(
            lambda: any(c["args"].get("reply_broadcast") in (True, "true", "1")
                        for c in slack.calls_to("chat.postMessage")),
            timeout=15,
        )  # fmt: skip
        server.stop()  # every log line is written

        events = events_of(frames)
        assert run["status"] == "succeeded", (run, of_type(events, "error"))
        probe_output = of_type(events, "Tool: Bash")[0]["output"]
        assert "probe-done" in probe_output and "PATH=" in probe_output
        bare = github.bare_path("acme/widgets")
        pushed = subprocess.run(
            ["git", "--git-dir", str(bare), "cat-file", "--batch-all-objects", "--batch"],
            check=True, capture_output=True,
        ).stdout.decode(errors="replace")  # fmt: skip
        (pr,) = github.pulls("acme/widgets")
        model_bodies = json.dumps([r["body"] for r in fake_model.requests])
        places = {
            "events": json.dumps(events),
            "run": json.dumps(run),
            "log": server.logs(),
            "http error": echo_http.text,
            "slack error": echo_slack.text,
            "slack ack": ack.text,
            "slack calls": json.dumps([c["args"] for c in slack.calls]),
            "slack ephemerals": json.dumps(slack.ephemerals),
            "slack responses": json.dumps([r["payload"] for r in slack.responses]),
            "pull request": json.dumps(pr),
            "github request bodies": json.dumps(
                [r.get("body") for r in github.requests], default=str
            ),
            "pushed objects": pushed,
            "branches": json.dumps(github.branches("acme/widgets")),
            "what the model saw (the sandbox's output)": model_bodies,
        }
        for where, text_seen in places.items():
            for name, value in SECRETS.items():
                assert value not in text_seen, f"{name} in {where}"
            assert MARK not in text_seen and MARK.lower() not in text_seen, where
        assert "[REDACTED]" in json.dumps(events[0]) and "[REDACTED]" in pr["body"]
        assert "[REDACTED]" in pr["title"]
        # Every secret was really in use, on the host: the model key, the token, the bot token.
        assert any(
            r["headers"].get("authorization") == f"Bearer {SECRETS['ANTHROPIC_API_KEY']}"
            or r["headers"].get("x-api-key") == SECRETS["ANTHROPIC_API_KEY"]
            for r in fake_model.requests
        )
        assert any(r["path"].endswith("/git-receive-pack") for r in github.requests)
        assert any(
            SECRETS["SLACK_BOT_TOKEN"] in c["headers"].get("authorization", "") for c in slack.calls
        )
