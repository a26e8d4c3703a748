"""`backspace run | serve | doctor | --version` as a user runs them: a real subprocess with its own
environment, real git repositories, the real sandbox and the loopback fake model.

The slow commands (those that import the whole service) are started together by one fixture and
awaited by the test that checks each one, so the file stays fast on a small machine.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backspace import __version__
from tests.conftest import git, make_repo
from tests.fakes.anthropic import Fail, FakeAnthropic, Reply, Text, ToolCall
from tests.helpers import Command, backspace, cli_env
from tests.scenarios import EDIT_SIGNUP
from tests.server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

EDIT = EDIT_SIGNUP
FINISH = Reply(
    [
        Text("Done."),
        ToolCall(
            "finish", {"title": "Validate the name", "body": "Adds a check.", "tests": "none"}
        ),
    ]
)
# Square brackets in what the agent says and runs must be shown as they are (not read as markup).
LOOK = Reply(
    [
        Text("Let me look at [the] code."),
        ToolCall("bash", {"command": "cat app.py  # [/x] [bold]"}),
    ]
)
SCENARIOS: dict[str, list[Any]] = {
    "cli-edit": [LOOK, Reply([EDIT]), FINISH],
    "cli-overloaded": [[Fail(529, times=99)]],
    "cli-nothing": [Reply([ToolCall("bash", {"command": "cat app.py"})]), FINISH],
}


def runs_in(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT id, status FROM runs").fetchall()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios=SCENARIOS) as model:
        yield model


@pytest.fixture(scope="module")
def commands(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeAnthropic
) -> Iterator[dict[str, Command]]:
    """Every slow command of this file, started at once; each test awaits its own."""
    base = tmp_path_factory.mktemp("cli")
    started: dict[str, Command] = {}

    def start(name: str, args: list[str], *, model: bool = True, **settings: str) -> None:
        workdir = base / name
        repos = workdir / "repos"
        repos.mkdir(parents=True)
        make_repo(repos, "widgets")
        if model:
            settings = {
                "ANTHROPIC_API_KEY": "sk-ant-api03-cli-test-key",
                "ANTHROPIC_BASE_URL": fake.url,
                **settings,
            }
        env = cli_env(workdir, BACKSPACE_LOCAL_REPOS=str(repos), **settings)
        started[name] = Command(workdir, args, env)

    start("edit", ["run", "local:widgets", "cli-edit: validate the signup name"])
    start(
        "overloaded",
        ["run", "local:widgets", "cli-overloaded: anything"],
        BACKSPACE_MODEL_RETRIES="1",
        BACKSPACE_MODEL_RETRY_DELAY="0.01",
    )
    start("nothing", ["run", "local:widgets", "cli-nothing: look only"])
    start("outside", ["run", "/etc", "change it"])
    start("option", ["run", "--", "--upload-pack=touch /tmp/pwned-cli", "change it"])
    start("missing", ["run", "local:missing", "change it"])
    start("control", ["run", "local:widgets", "change it\x1b[2J\x07"])
    start("long", ["run", "local:widgets", "x" * 20_001], BACKSPACE_MAX_PROMPT_CHARS="20000")
    start("doctor-ok", ["doctor"])
    start("doctor-no-model", ["doctor"], model=False)
    # A port bound but never listening refuses connections, and no other process (another
    # worker's server, say) can take it while the doctor runs: a port found free could be.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    start(
        "doctor-closed-port",
        ["doctor"],
        model=False,
        ANTHROPIC_API_KEY="sk-ant-api03-cli-test-key",
        ANTHROPIC_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}",
    )
    yield started
    closed.close()
    for command in started.values():
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait()


def test_run_prints_only_the_pull_request_url_and_pushes_the_branch(
    commands: dict[str, Command], fake: FakeAnthropic
) -> None:
    command = commands["edit"]
    result = command.result()
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"http://\S+/prs/1\n", result.stdout), result.stdout
    url = result.stdout.strip()
    # Progress and each agent step go to stderr, as the user reads them.
    assert "agent Let me look at [the] code." in result.stderr
    assert "[cyan]" not in result.stderr
    assert "$ cat app.py  # [/x] [bold]  exit 0" in result.stderr
    assert "edit app.py" in result.stderr
    assert f"pull request {url} (1 files, +2 −0)" in result.stderr
    assert re.search(r"^succeeded ━+ 100%", result.stderr, re.MULTILINE), result.stderr
    assert "succeeded in" in result.stderr
    # The origin repository got exactly the change, on a new branch.
    origin = command.workdir / "repos" / "widgets"
    branches = git(origin, "branch", "--list", "--format=%(refname:short)").split()
    new = [b for b in branches if b != "main"]
    assert len(new) == 1 and new[0].startswith("backspace/cli-edit"), branches
    assert git(origin, "diff", "--name-only", "main", new[0]).split() == ["app.py"]
    assert "+    if not name:" in git(origin, "diff", "main", new[0])
    assert fake.attempts("cli-edit", 0) == 1
    assert [status for _, status in runs_in(command.workdir / "backspace.db")] == ["succeeded"]


def test_a_failed_run_exits_1_and_names_the_error_code(commands: dict[str, Command]) -> None:
    command = commands["overloaded"]
    result = command.result()
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "error model_overloaded:" in result.stderr
    assert "failed in" in result.stderr
    assert [status for _, status in runs_in(command.workdir / "backspace.db")] == ["failed"]
    origin = command.workdir / "repos" / "widgets"
    assert git(origin, "branch", "--list", "--format=%(refname:short)").split() == ["main"]


def test_a_run_that_changes_nothing_exits_0_without_a_url(commands: dict[str, Command]) -> None:
    command = commands["nothing"]
    result = command.result()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "$ cat app.py  exit 0" in result.stderr and "no_changes in" in result.stderr
    origin = command.workdir / "repos" / "widgets"
    assert git(origin, "branch", "--list", "--format=%(refname:short)").split() == ["main"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("outside", "/etc is not inside BACKSPACE_LOCAL_REPOS"),
        ("option", "a repository reference cannot start with '-'"),
        ("missing", "local:missing is not a git repository"),
        ("control", "contains control characters"),
        ("long", "more than the limit of 20000 characters (BACKSPACE_MAX_PROMPT_CHARS)"),
    ],
)
def test_a_bad_repository_exits_2_with_a_clear_message_and_creates_no_run(
    commands: dict[str, Command], name: str, message: str
) -> None:
    command = commands[name]
    result = command.result()
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert message in " ".join(result.stderr.split()), result.stderr
    assert runs_in(command.workdir / "backspace.db") == []
    assert not Path("/tmp/pwned-cli").exists()


def test_run_without_a_model_fails_at_once_naming_the_variable(tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    make_repo(repos, "widgets")
    env = cli_env(tmp_path, BACKSPACE_LOCAL_REPOS=str(repos))
    result = backspace(tmp_path, "run", "local:widgets", "add validation", env=env)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert result.seconds < 5, "it should not wait for anything"
    # Refused before anything started: no run recorded, no sandbox, no agent.
    assert runs_in(tmp_path / "backspace.db") == []
    assert "agent" not in result.stderr and "failed in" not in result.stderr


@pytest.mark.parametrize(
    ("settings", "variable", "accepts"),
    [
        ({"MAX_CONCURRENT_RUNS": "abc"}, "MAX_CONCURRENT_RUNS", "valid integer"),
        ({"PORT": "99999"}, "PORT", "less than or equal to 65535"),
        ({"BACKSPACE_SANDBOX": "docker"}, "BACKSPACE_SANDBOX", "'local' or 'daytona'"),
        ({"REQUIRE_AUTH": "true"}, "REQUIRE_AUTH=true needs API_KEY", "set API_KEY"),
    ],
)
@pytest.mark.parametrize("subcommand", ["serve", "doctor"])
def test_invalid_settings_stop_start_up_with_exit_2_naming_the_variable(
    tmp_path: Path, subcommand: str, settings: dict[str, str], variable: str, accepts: str
) -> None:
    port = free_port()
    env = cli_env(tmp_path, HOST="127.0.0.1", **{"PORT": str(port), **settings})
    # A server that started would not exit: `backspace` fails the test by timing out.
    result = backspace(tmp_path, subcommand, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert f"{variable}" in result.stderr and accepts in result.stderr, result.stderr
    assert result.stderr.startswith("backspace: invalid settings")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "backspace.db").exists()


def test_doctor_with_a_model_and_repositories_says_all_is_well(
    commands: dict[str, Command],
) -> None:
    result = commands["doctor-ok"].result()
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout
    assert re.search(r"model\s+│ ok ", table), table
    assert re.search(r"sandbox \(local\)\s+│ ok ", table), table
    assert re.search(r"git host \(local\)\s+│ ok ", table), table
    assert re.search(r"store\s+│ ok ", table), table
    assert "problem" not in table


def test_doctor_without_a_model_exits_1_naming_the_variable(
    commands: dict[str, Command],
) -> None:
    result = commands["doctor-no-model"].result()
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"model\s+│ problem ", result.stdout), result.stdout
    assert "ANTHROPIC_API_KEY" in result.stdout
    assert re.search(r"store\s+│ ok ", result.stdout), result.stdout


def test_doctor_says_when_the_model_server_cannot_be_reached(
    commands: dict[str, Command],
) -> None:
    result = commands["doctor-closed-port"].result()
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"model\s+│ problem ", result.stdout), result.stdout
    assert "cannot reach" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = backspace(tmp_path, "--version", env=cli_env(tmp_path))
    assert result.returncode == 0
    assert result.stdout == f"backspace {__version__}\n"
