"""The seam between the front ends and the orchestrator, kept by reading every module's imports.

- The orchestrator (backspace/orchestrator/) knows nothing of its front ends: it imports none of
  backspace.http, backspace.slackbot, backspace.cli, nor the composition root (backspace.app,
  and backspace.__main__, the entry point that imports it).
- The front ends (backspace/http/, backspace/slackbot/, backspace/cli.py) reach the orchestrator
  through the service they are handed, never through the composition root: none imports
  backspace.app (nor backspace.__main__). Nor does the HTTP front end import the Slack one, or
  the Slack one the HTTP one (the web app serves Slack through a protocol).
- backspace.app is imported by one module of the package only: backspace/__main__.py, the
  process's entry point, which hands the CLI its wiring (tests and bench/ may import it too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backspace"
ROOT_IMPORTERS = {"backspace/__main__.py"}
COMPOSITION = ("backspace.app", "backspace.__main__")
FRONT_ENDS = ("backspace.http", "backspace.slackbot", "backspace.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (inside functions too), as absolute names;
    `from a import b` counts as importing `a` and `a.b`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                anchor = _module_name(path).split(".")
                if path.name != "__init__.py":
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(*relative: str) -> list[Path]:
    paths: list[Path] = []
    for part in relative:
        target = PACKAGE.parent / part
        paths.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return paths


def _offences(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in paths
        for name in sorted(imports(path))
        if _within(name, forbidden)
    ]


def test_the_orchestrator_imports_no_front_end_and_not_the_composition_root() -> None:
    paths = _modules("backspace/orchestrator")
    assert len(paths) > 20
    assert _offences(paths, FRONT_ENDS + COMPOSITION) == []


@pytest.mark.parametrize("front_end", ["backspace/http", "backspace/slackbot", "backspace/cli.py"])
def test_no_front_end_imports_the_composition_root(front_end: str) -> None:
    assert _offences(_modules(front_end), COMPOSITION) == []


def test_the_http_and_slack_front_ends_do_not_import_each_other() -> None:
    assert _offences(_modules("backspace/http"), ("backspace.slackbot",)) == []
    assert _offences(_modules("backspace/slackbot"), ("backspace.http",)) == []


def test_only_the_entry_point_imports_the_composition_root() -> None:
    importers = {
        str(path.relative_to(PACKAGE.parent))
        for path in _modules("backspace")
        if any(_within(name, ("backspace.app",)) for name in imports(path))
    }
    assert importers == ROOT_IMPORTERS


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from backspace.app import create_app\n")
    assert "backspace.app" in imports(module)
    relative = PACKAGE / "http" / "routes.py"
    assert "backspace.http.errors" in imports(relative)
