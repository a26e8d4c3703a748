"""The error tree: the drawing in errors.py, the classes, the codes they raise and the README's
"Error codes" table all say the same thing, so a reader can trust any one of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from backspace.orchestrator import errors
from backspace.orchestrator.errors import BackspaceError, ModelError

ROOT = Path(__file__).resolve().parent.parent
TREE_LINE = re.compile(r"^(?P<indent>(?:│   |    )*(?:├── |└── )|)(?P<name>[A-Z]\w+)\s")


def drawn_tree() -> dict[str, str | None]:
    """Each class in the module docstring's tree, with the class drawn above it."""
    assert errors.__doc__
    block = errors.__doc__[errors.__doc__.index("\nBackspaceError ") + 1 :].split("\n\n")[0]
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in block.splitlines():
        match = TREE_LINE.match(line)
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["indent"]) // 4  # the root 0, its children 1, ...
        del stack[depth:]
        parents[match["name"]] = stack[-1] if stack else None
        stack.append(match["name"])
    return parents


def the_classes() -> dict[str, str | None]:
    """Each error class in errors.py, with its parent in the tree."""
    found: dict[str, str | None] = {}
    pending: list[type[BackspaceError]] = [BackspaceError]
    while pending:
        cls = pending.pop()
        parent = next((b for b in cls.__bases__ if issubclass(b, BackspaceError)), None)
        found[cls.__name__] = parent.__name__ if parent else None
        pending.extend(cls.__subclasses__())
    return found


def declared(cls: type[BackspaceError]) -> set[str]:
    """The codes a class raises itself: its own `code`, or the `codes` it lists."""
    own = set(cls.__dict__.get("codes", ()))
    if "code" in cls.__dict__:
        own.add(cls.__dict__["code"])
    return own


def readme_codes() -> dict[str, str]:
    """code -> class, from the README's table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Error codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| `(\w+)` \|", section, flags=re.MULTILINE)
    codes = dict(rows)
    assert len(codes) == len(rows), "a code is listed twice"
    return codes


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    assert drawn_tree() == the_classes()


def test_every_class_of_the_tree_lives_in_errors_py() -> None:
    for name in the_classes():
        assert getattr(errors, name).__module__ == errors.__name__


def test_each_code_in_the_readme_comes_from_exactly_one_class() -> None:
    classes = {name: getattr(errors, name) for name in the_classes()}
    table = readme_codes()
    for code, name in table.items():
        raisers = [n for n, cls in classes.items() if code in declared(cls)]
        assert raisers == [name], f"{code}: the README says {name}, the classes say {raisers}"
    every = {code for cls in classes.values() for code in declared(cls)}
    assert every == set(table), "a code the classes raise is missing from the README"


def test_every_code_raised_in_the_source_is_declared_by_its_class() -> None:
    """A literal code given to a class that takes one is among the codes that class lists."""
    coded = {
        name: getattr(errors, name)
        for name in the_classes()
        if "codes" in getattr(errors, name).__dict__
    }
    seen = 0
    for path in (ROOT / "backspace").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            cls = coded.get(node.func.id)
            if cls is None:
                continue
            args = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "code")]
            for arg in args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    seen += 1
                    assert arg.value in cls.codes, f"{path.name}: {cls.__name__}({arg.value!r})"
    assert seen > 50  # the scan really found the raise sites


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (200, ""),
        (400, "prompt is too long: 300000 tokens"),
        (400, "bad"),
        (401, ""),
        (403, ""),
        (404, ""),
        (413, ""),
        (429, ""),
        (500, ""),
        (529, ""),
    ],
)
def test_every_model_api_answer_has_a_declared_code(status: int, message: str) -> None:
    import anthropic
    import httpx2

    from backspace.orchestrator.agent.model import _status_error

    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    body = {"error": {"type": "error", "message": message}}
    exc = anthropic.APIStatusError(
        message, response=httpx2.Response(status, request=request), body=body
    )
    assert _status_error(exc, "a-model", "", 1).code in ModelError.codes


def test_the_event_carries_the_errors_own_words() -> None:
    """What the pipeline and runner used to add around an error, the error now says itself."""
    from backspace.orchestrator.events import Stage

    sandbox = errors.SandboxQuota("Daytona refused")
    assert sandbox.describe(Stage.SANDBOX) == "the sandbox could not be created: Daytona refused"
    assert sandbox.describe(Stage.AGENT) == "the sandbox failed: Daytona refused"
    assert sandbox.retryable and sandbox.code == "sandbox_quota"
    model = ModelError("model_auth", "the model API rejected the key")
    assert model.describe(Stage.AGENT) == "The model failed: the model API rejected the key"
    assert str(model) == "the model API rejected the key"
    store = errors.StoreFull("disk at /srv nearly full")
    assert "/srv" not in store.describe(Stage.AGENT) and store.code == "store_unavailable"
    reference = errors.RepoRefError("no such repository")
    assert isinstance(reference, ValueError) and reference.code == "bad_repository"
    assert BackspaceError("boom").code == "internal_error"
