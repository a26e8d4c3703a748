"""Repository environments end to end (issue 14): `.backspace.toml`, setup through the egress
door, the cached layer, and verification the agent cannot fake.

A loopback PEP 503 index (tests/fakes/package_index.py) stands for PyPI; sandboxes reach it as
`pypi.test`, which BACKSPACE_EGRESS_RESOLVE maps to it. Real bubblewrap, the real proxy, real
pip, real git, the real server; the model is the loopback fake.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backspace.orchestrator.egress.gate import BlockedAttempt, Phase
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.environment.cache_key import cache_key
from backspace.orchestrator.environment.policy import EnvironmentPolicy, network_plan
from backspace.orchestrator.environment.receipt import CommandReceipt, Receipt
from backspace.orchestrator.environment.repo_file import parse_repo_file
from backspace.orchestrator.environment.setup import parse_status
from backspace.orchestrator.environment.starter import detect
from backspace.orchestrator.errors import RunFailure
from backspace.orchestrator.sandboxes.local import default_root
from tests.conftest import git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.package_index import PackageIndex, Wheel
from tests.helpers import sandbox_processes
from tests.scenarios import finish
from tests.server import Server, start_server
from tests.sse import of_type, post_run
from tests.tls import TLS

pytestmark = pytest.mark.timeout(180)

RUNNER = """\
import os, sys
def main():
    sys.path.insert(0, os.getcwd())
    import app
    got = app.price(2)
    print("price(2) =", got)
    sys.exit(0 if got == 4 else 1)
"""
TINYDEP = Wheel(
    "tinydep",
    "1.0",
    {"tinydep/__init__.py": "VALUE = 42\n", "tinydep/runner.py": RUNNER},
    {"tinytest": "tinydep.runner:main"},
)
TINYDEP_2 = Wheel("tinydep", "2.0", TINYDEP.files, TINYDEP.console_scripts)

# A venv without its own pip (ensurepip costs seconds per setup), filled by the system's pip.
SETUP = (
    "python3 -m venv --without-pip .venv && python3 -m pip --python .venv/bin/python install -q "
    "--index-url http://pypi.test/simple/ --trusted-host pypi.test "
)
REPO_FILE = f"""\
[setup]
run = "{SETUP}-r requirements.txt"
cache_key = ["requirements.txt"]
maintenance = "echo maintained > .venv/maintained"
[network]
setup = ["pypi.test"]
[verify]
run = [".venv/bin/tinytest"]
"""
APP = "def price(x):\n    return x\n"
DOUBLE = ToolCall(
    "str_replace_based_edit_tool",
    {
        "command": "str_replace",
        "path": "app.py",
        "old_str": "return x\n",
        "new_str": "return x * 2\n",
    },
)


def bash(command: str) -> ToolCall:
    return ToolCall("bash", {"command": command})


# --- the file, the plan, the key, the receipt: no server ---------------------------------------
def test_a_bad_repo_file_names_the_line_and_the_reason() -> None:
    cases = {
        b"[setup]\nrun = 5\n": "line 2: setup.run",
        b"[setup]\nrun = 'x'\n[network]\nsetup = ['127.0.0.1']\n": "line 4: network.setup",
        b"[setup]\nrun = 'x'\n\n[verfy]\nrun = 'y'\n": "line 4: verfy: unknown key",
        b"[setup\n": "not valid TOML",
        b"[setup]\nrun = 'x'\ncache_key = ['../etc/passwd']\n": "line 3: setup.cache_key",
        b"[network]\nsetup = ['a.org']\n": "no [setup] run",
        b"x" * (65 * 1024): "larger than 64 KiB",
    }
    for data, expected in cases.items():
        with pytest.raises(RunFailure) as caught:
            parse_repo_file(data)
        assert caught.value.code == "bad_repo_file"
        assert expected in caught.value.message, (data[:40], caught.value.message)
        assert caught.value.message.startswith(".backspace.toml: ")


def test_the_repository_asks_and_the_operator_decides() -> None:
    repo = parse_repo_file(
        b"[setup]\nrun = 'x'\n[network]\nsetup = ['pypi.org', 'evil.example']\n"
        b"agent = ['pypi.org', '*.pythonhosted.org']\n"
    )
    ceiling = HostList.parse(["pypi.org", "files.pythonhosted.org"])
    off = network_plan(repo, EnvironmentPolicy(egress_allow=ceiling))
    assert list(off.setup) == ["pypi.org"] and off.setup_cut == ("evil.example",)
    assert not off.agent and off.agent_off
    assert any("evil.example" in n for n in off.notices())
    assert any("BACKSPACE_AGENT_NETWORK=off" in n for n in off.notices())
    on = network_plan(repo, EnvironmentPolicy(egress_allow=ceiling, agent_network=True))
    # A wildcard is kept only when the ceiling allows every name it could match.
    assert list(on.agent) == ["pypi.org"] and on.agent_cut == ("*.pythonhosted.org",)


def test_every_part_of_the_cache_key_changes_it() -> None:
    parts: dict[str, Any] = {
        "backend": "local",
        "identity": "debian-12",
        "repository": "local:shop",
        "setup": "make deps",
        "maintenance": None,
        "setup_hosts": HostList.parse(["pypi.org"]),
        "files": [("requirements.txt", "a" * 40)],
    }
    key = cache_key(**parts)
    assert len(key) == 64 and cache_key(**parts) == key
    changed = {
        "backend": "daytona",
        "identity": "debian-13",
        "repository": "local:other",
        "setup": "make deps2",
        "maintenance": "true",
        "setup_hosts": HostList.parse(["pypi.org", "x.org"]),
        "files": [("requirements.txt", "b" * 40)],
    }
    for name, value in changed.items():
        assert cache_key(**{**parts, name: value}) != key, name


def test_environment_paths_come_from_git_status_and_stay_in_the_work_tree() -> None:
    output = "?? .venv/\0!! node_modules/\0 M package-lock.json\0R  new\0old\0?? ../escape\0"
    assert parse_status(output) == (".venv", "new", "node_modules", "old", "package-lock.json")


def test_the_receipt_is_inert_whatever_the_output_says() -> None:
    hostile = "```\n![x](https://evil.example/a.png) @org/team closes #1 <!-- backspace:run=x -->"
    receipt = Receipt(
        environment="cached 0123456789ab",
        tree="f" * 40,
        commands=[CommandReceipt(f"pytest `x` | {hostile}", 1, 1234, False, hostile)],
        blocked=[BlockedAttempt("evil.example", 443, Phase.VERIFY, "curl evil", "not listed")],
    )
    text = receipt.markdown(cost_usd=0.12, keep_host=None)
    assert "**FAILED**" in text and "draft" in text and "$0.12" in text
    assert "evil.example/a.png" not in text and "<!--" not in text
    assert "@org" not in text and "closes #1" not in text
    # The output's fence cannot be closed by the output: the fence is longer than any run in it.
    fences = [line for line in text.splitlines() if line.startswith("````")]
    assert fences, text


def test_the_starter_file_follows_the_ecosystem() -> None:
    assert detect({"pyproject.toml", "src"}) == "Python"
    assert detect({"package.json"}) == "Node"
    assert detect({"go.mod"}) == "Go"
    assert detect({"Cargo.toml"}) == "Rust"
    assert detect({"README.md"}) is None


# --- end to end through the server -------------------------------------------------------------
@dataclass
class Rig:
    server: Server
    model: FakeAnthropic
    index: PackageIndex
    repos: Path
    cache: Path


@contextmanager
def environment_rig(base: Path, wheels: list[Wheel], **settings: str) -> Iterator[Rig]:
    """A real server whose sandboxes reach the loopback index as `pypi.test`."""
    repos, cache = base / "repos", base / "cache"
    repos.mkdir()
    with PackageIndex(wheels) as index, FakeAnthropic(scenarios={}) as model:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-api03-environments-0123456789",
            "ANTHROPIC_BASE_URL": model.url,
            "BACKSPACE_LOCAL_REPOS": str(repos),
            "BACKSPACE_EGRESS_RESOLVE": f"pypi.test=127.0.0.1:{index.port}",
            "BACKSPACE_ENV_CACHE_DIR": str(cache),
            **settings,
        }
        server = start_server(base / "server", env)
        try:
            yield Rig(server, model, index, repos, cache)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("environments")
    settings = {"BACKSPACE_EGRESS_ALLOW": "pypi.test,evil.test", "BACKSPACE_SETUP_TIMEOUT": "60"}
    with environment_rig(base, [TINYDEP, TINYDEP_2], **settings) as made:
        yield made


def shop(rig: Rig, name: str, repo_file: str = REPO_FILE, **files: str) -> str:
    make_repo(
        rig.repos,
        name,
        {
            "app.py": APP,
            "requirements.txt": "tinydep==1.0\n",
            ".backspace.toml": repo_file,
            **files,
        },
    )
    return f"local:{name}"


async def run(rig: Rig, repo: str, prompt: str, steps: list[Reply]) -> list[dict[str, Any]]:
    rig.model.scenarios[prompt] = steps
    return await post_run(rig.server.url, {"repo_url": repo, "prompt": f"{prompt}: go"})


async def pr_body(rig: Rig, events: list[dict[str, Any]]) -> str:
    number = of_type(events, "pr_created")[0]["pr_url"].rsplit("/", 1)[1]
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        record = (await client.get(f"{rig.server.url}/api/prs/{number}")).json()
    return str(record["body"])


def assert_succeeded(events: list[dict[str, Any]]) -> None:
    errors = [(e["code"], e["message"]) for e in of_type(events, "error")]
    assert events[-1]["status"] == "succeeded", (errors, messages(events))


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in of_type(events, "progress")]


def elapsed(events: list[dict[str, Any]]) -> float:
    first, last = events[0]["timestamp"], events[-1]["timestamp"]
    return _seconds(last) - _seconds(first)


def _seconds(stamp: str) -> float:
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:-1] or 0)


@pytest.mark.e2e  # it starts the real server
async def test_setup_installs_the_agent_uses_verification_proves_and_the_cache_skips(
    rig: Rig,
) -> None:
    repo = shop(rig, "shop")
    steps = [
        Reply([bash(".venv/bin/python -c 'import tinydep; print(tinydep.VALUE)'")]),
        Reply([bash("curl -sS -m 5 http://pypi.test/simple/ || echo refused")]),
        Reply([DOUBLE]),
        finish("Double the price"),
    ]
    first = await run(rig, repo, "env-first", steps)
    assert_succeeded(first)
    outputs = [e["output"] for e in of_type(first, "Tool: Bash")]
    assert any("42" in out for out in outputs), outputs  # the agent imported the package
    assert rig.index.total_downloads == 1
    # The agent phase reaches nothing: the attempt is an event naming the command.
    blocked = of_type(first, "network_blocked")
    assert blocked and all(b["phase"] == "agent" for b in blocked), blocked
    assert "curl" in blocked[0]["command"] and blocked[0]["host"] == "pypi.test"
    assert "[network] agent" in blocked[0]["hint"]
    (receipt,) = of_type(first, "verification")
    assert receipt["passed"] and receipt["commands"][0]["command"] == ".venv/bin/tinytest"
    assert "price(2) = 4" in receipt["commands"][0]["output_tail"]
    body = await pr_body(rig, first)
    assert "## Verification" in body and "passed" in body and ".venv/bin/tinytest" in body
    assert "pypi.test:80" in body  # the refused attempt is in the PR
    pr = of_type(first, "pr_created")[0]
    assert pr["files_changed"] == 1  # app.py only: the environment is never published
    branch = pr["branch"]
    assert git(rig.repos / "shop", "ls-tree", "-r", "--name-only", branch).split() == [
        ".backspace.toml",
        "app.py",
        "requirements.txt",
    ]

    second = await run(rig, repo, "env-second", [Reply([DOUBLE]), finish("Double it again")])
    assert_succeeded(second)
    said = messages(second)
    assert any("Using the cached environment" in m and "maintenance" in m for m in said), said
    assert any("already holds" in m for m in said), said  # the base was not sent again
    assert rig.index.total_downloads == 1, "the second run downloaded again"
    assert elapsed(second) < elapsed(first), (elapsed(first), elapsed(second))
    # The agent was told what setup ran, that it has no network, and how it will be verified.
    system = rig.model.requests_for("env-second")[0]["system"][0]["text"]
    assert "restored from a cache" in system and "Network: none" in system, system
    assert "`.venv/bin/tinytest`" in system, system

    # A change to a cache_key file makes a new environment.
    (rig.repos / "shop" / "requirements.txt").write_text("tinydep==2.0\n")
    git(rig.repos / "shop", "commit", "-qam", "bump tinydep")
    third = await run(rig, repo, "env-third", [Reply([DOUBLE]), finish("Double")])
    assert_succeeded(third)
    assert not any("Using the cached environment" in m for m in messages(third))
    assert rig.index.downloads["tinydep-2.0-py3-none-any.whl"] == 1


@pytest.mark.e2e  # it starts the real server
async def test_an_agent_that_fakes_the_test_runner_does_not_change_the_verdict(rig: Rig) -> None:
    repo = shop(rig, "tamper")
    steps = [
        # The change is wrong, and the agent makes its own environment's runner always pass.
        Reply([bash("printf '#!/bin/sh\\nexit 0\\n' > .venv/bin/tinytest && .venv/bin/tinytest")]),
        Reply([bash("echo '# looks done' >> app.py")]),
        finish("Looks done"),
    ]
    events = await run(rig, repo, "env-tamper", steps)
    assert_succeeded(events)
    (receipt,) = of_type(events, "verification")
    assert not receipt["passed"] and receipt["draft"], receipt
    assert receipt["commands"][0]["exit_code"] == 1, receipt
    assert of_type(events, "pr_created")[0]["draft"] is True
    body = await pr_body(rig, events)
    assert "**FAILED**" in body and "draft" in body


@pytest.mark.e2e  # it starts the real server
async def test_setup_reaches_only_its_list_and_never_an_internal_address(rig: Rig) -> None:
    port = rig.index.port
    probes = [
        "http://evil.test/",  # allowed by the operator, not listed by the repository
        f"http://127.0.0.1:{port}/simple/",
        "http://localhost/",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",  # curl sends it as 127.0.0.1: refused as that
    ]
    # Through the door even for loopback names (NO_PROXY sends those to the sandbox's own
    # loopback, where nothing of the host's listens).
    curls = " ; ".join(f"curl -s -m 5 -o /dev/null --noproxy '' {p}" for p in probes)
    # Setup also writes down everything it can see of its environment (and PID 1's): the layer
    # kept on the host must hold no credential of the server's.
    dump = "mkdir -p .venv && { env; tr '\\\\0' '\\\\n' < /proc/1/environ; } > .venv/seen"
    repo_file = REPO_FILE.replace(f'"{SETUP}-r requirements.txt"', f'"{curls} ; {dump}"')
    repo_file = repo_file.replace('[".venv/bin/tinytest"]', '["true"]')
    repo = shop(rig, "probe", repo_file)
    seen = len(rig.index.requests)
    events = await run(rig, repo, "env-probe", [Reply([DOUBLE]), finish("Double")])
    assert_succeeded(events)
    blocked = [b for b in of_type(events, "network_blocked") if b["phase"] == "setup"]
    hosts = {b["host"] for b in blocked}
    assert {"evil.test", "127.0.0.1", "localhost", "10.0.0.5", "169.254.169.254"} <= hosts, blocked
    assert all("curl" in (b["command"] or "") for b in blocked), blocked
    assert rig.index.requests[seen:] == [], "a refused probe reached the index"
    (seen_file,) = rig.cache.glob("*/workspace/.venv/seen")
    environment = seen_file.read_text()
    assert "PATH=" in environment and "HTTPS_PROXY=" in environment, environment
    assert "sk-ant" not in environment and "environments-0123456789" not in environment


@pytest.mark.e2e  # it starts the real server
async def test_a_bad_file_or_a_failing_setup_ends_the_run_clearly(rig: Rig) -> None:
    bad = shop(rig, "badfile", "[setup]\nrun = 'true'\n\n[network]\nsetup = ['10.0.0.1']\n")
    events = await run(rig, bad, "env-bad", [finish()])
    assert events[-1]["status"] == "failed"
    (error,) = of_type(events, "error")
    assert error["code"] == "bad_repo_file" and "line 5" in error["message"], error

    failing = shop(
        rig, "failing", REPO_FILE.replace(f"{SETUP}-r requirements.txt", "echo oops; exit 3")
    )
    events = await run(rig, failing, "env-fail", [finish()])
    (error,) = of_type(events, "error")
    assert (
        error["code"] == "setup_failed"
        and "exit 3" in error["message"]
        and "oops" in error["message"]
    )
    # Another run is unaffected.
    fine = await run(rig, shop(rig, "fine"), "env-fine", [Reply([DOUBLE]), finish("Double")])
    assert_succeeded(fine)
    assert leftovers(rig.server) == []


@pytest.mark.e2e  # it starts the real server
async def test_without_the_file_the_pull_request_suggests_one(rig: Rig) -> None:
    make_repo(rig.repos, "plain", {"app.py": APP, "pyproject.toml": "[project]\nname = 'plain'\n"})
    events = await run(rig, "local:plain", "env-plain", [Reply([DOUBLE]), finish("Double")])
    assert_succeeded(events)
    assert not of_type(events, "verification")
    body = await pr_body(rig, events)
    assert "no `.backspace.toml`" in body and "Python project" in body and "[setup]" in body


# --- limits: a second server with a short setup timeout, a tiny cache and agent network ---------
@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A second server: a short setup timeout, a 1 MB cache and agent network by allowlist."""
    base = tmp_path_factory.mktemp("environments-tight")
    settings = {
        "BACKSPACE_EGRESS_ALLOW": "pypi.test",
        "BACKSPACE_AGENT_NETWORK": "allowlist",
        "BACKSPACE_ENV_CACHE_MB": "1",
        "BACKSPACE_SETUP_TIMEOUT": "3",
    }
    with environment_rig(base, [TINYDEP], **settings) as made:
        yield made


def leftovers(server: Server) -> list[str]:
    """Run directories, sandbox processes and mounts of this server's sandboxes still there."""
    root = default_root(server.db_path)
    left = [str(p) for p in root.iterdir()] if root.exists() else []
    left += [f"process {pid}" for pid in sandbox_processes(root)]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    left += [line for line in mounts if str(root) in line]
    return left


@pytest.mark.e2e  # it starts the real server
async def test_a_setup_that_hangs_is_stopped_and_leaves_nothing(tight: Rig) -> None:
    make_repo(
        tight.repos,
        "hangs",
        {"app.py": APP, ".backspace.toml": "[setup]\nrun = 'sleep 60 & sleep 60'\n"},
    )
    started = time.monotonic()
    events = await run(tight, "local:hangs", "tight-hang", [finish()])
    assert time.monotonic() - started < 30
    (error,) = of_type(events, "error")
    assert error["code"] == "setup_timed_out" and "BACKSPACE_SETUP_TIMEOUT" in error["message"]
    assert leftovers(tight.server) == []


@pytest.mark.e2e  # it starts the real server
async def test_an_environment_too_big_for_the_cache_is_not_kept_and_the_run_goes_on(
    tight: Rig,
) -> None:
    repo_file = (
        "[setup]\nrun = 'mkdir -p .venv/bin && head -c 3000000 /dev/zero > .venv/blob "
        '&& printf "#!/bin/sh\\ngrep -q \\"x \\\\\\\\* 2\\" app.py\\n" > .venv/bin/check '
        "&& chmod +x .venv/bin/check'\n[verify]\nrun = '.venv/bin/check'\n"
    )
    make_repo(tight.repos, "big", {"app.py": APP, ".backspace.toml": repo_file})
    events = await run(tight, "local:big", "tight-big", [Reply([DOUBLE]), finish("Double")])
    assert_succeeded(events)
    said = messages(events)
    assert any("not cached" in m and "BACKSPACE_ENV_CACHE_MB" in m for m in said), said
    (receipt,) = of_type(events, "verification")
    assert receipt["environment"] == "set up afresh for verification"
    assert receipt["passed"], receipt
    assert not tight.cache.exists() or [p.name for p in tight.cache.iterdir()] == []
    assert leftovers(tight.server) == []


@pytest.mark.e2e  # it starts the real server
async def test_with_agent_network_on_the_agent_reaches_its_list_only(tight: Rig) -> None:
    repo_file = "[setup]\nrun = 'true'\n[network]\nagent = ['pypi.test']\n[verify]\nrun = 'true'\n"
    make_repo(tight.repos, "online", {"app.py": APP, ".backspace.toml": repo_file})
    steps = [
        Reply([bash("curl -sS -m 5 http://pypi.test/simple/tinydep/")]),
        Reply([bash("curl -sS -m 5 https://elsewhere.test/ || echo refused")]),
        Reply([DOUBLE]),
        finish("Double"),
    ]
    events = await run(tight, "local:online", "tight-online", steps)
    assert_succeeded(events)
    outputs = [e["output"] for e in of_type(events, "Tool: Bash")]
    assert any("tinydep-1.0-py3-none-any.whl" in out for out in outputs), outputs
    blocked = of_type(events, "network_blocked")
    assert [(b["host"], b["phase"]) for b in blocked] == [("elsewhere.test", "agent")], blocked
