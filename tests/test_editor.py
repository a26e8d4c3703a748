"""The text editor tool on a real bubblewrap sandbox: views, edits, and the paths it refuses.

No model is involved: each test calls `Editor.run` with the input the model would send and checks
both the result the model would get and the file as the sandbox really holds it.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path
from typing import Any

import pytest

from backspace.orchestrator.agent.editor import Editor
from backspace.orchestrator.agent.outcome import ToolOutcome
from backspace.orchestrator.events import EventType
from backspace.orchestrator.sandboxes.local import LocalSandbox

TEXT = "one\ntwo\nthree\nfour\n"


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def editor(sandbox: LocalSandbox) -> Editor:
    return Editor(sandbox, max_characters=16000)


async def run(editor: Editor, **tool_input: Any) -> ToolOutcome:
    return await editor.run(tool_input)


async def read(sandbox: LocalSandbox, path: str) -> str:
    return (await sandbox.read_file(f"/workspace/{path}")).decode()


async def exists(sandbox: LocalSandbox, path: str) -> bool:
    return (await sandbox.exec(f"test -e {shlex.quote(path)}")).exit_code == 0


def assert_error(outcome: ToolOutcome, *needles: str) -> None:
    assert outcome.is_error, outcome.content
    for needle in needles:
        assert needle in outcome.content, (needle, outcome.content)


# --- view -------------------------------------------------------------------------------------
async def test_view_numbers_lines_and_honours_view_range(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    await sandbox.write_file("/workspace/a.txt", TEXT.encode())

    whole = await run(editor, command="view", path="a.txt")
    assert not whole.is_error
    assert whole.content == (
        "Here's the result of running `cat -n` on a.txt:\n"
        "     1\tone\n     2\ttwo\n     3\tthree\n     4\tfour\n"
    )
    assert whole.event == (EventType.TOOL_READ, {"filepath": "a.txt"})

    middle = await run(editor, command="view", path="a.txt", view_range=[2, 3])
    assert middle.content.endswith("\n     2\ttwo\n     3\tthree\n")
    assert "one" not in middle.content and "four" not in middle.content

    to_end = await run(editor, command="view", path="a.txt", view_range=[3, -1])
    assert to_end.content.endswith("\n     3\tthree\n     4\tfour\n")
    assert "two" not in to_end.content

    single = await run(editor, command="view", path="a.txt", view_range=[4, 4])
    assert single.content.endswith(":\n     4\tfour\n")


@pytest.mark.parametrize(
    ("view_range", "needle"),
    [
        ([0, 2], "is invalid: a.txt has 4 lines"),
        ([3, 2], "is invalid"),
        ([1, 5], "is invalid"),
        ([5, -1], "is invalid"),
        ([1], "must be two integers"),
        ([1, 2, 3], "must be two integers"),
        ("1-2", "must be two integers"),
        (["1", "2"], "must be two integers"),
    ],
)
async def test_view_rejects_invalid_ranges(
    editor: Editor, sandbox: LocalSandbox, view_range: Any, needle: str
) -> None:
    await sandbox.write_file("/workspace/a.txt", TEXT.encode())
    outcome = await run(editor, command="view", path="a.txt", view_range=view_range)
    assert_error(outcome, needle)
    assert "\tone" not in outcome.content
    assert outcome.event is not None and outcome.event[0] == EventType.TOOL_READ
    assert outcome.event[1]["error"] == outcome.content


async def test_view_of_a_directory_lists_files_but_not_hidden_ones(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    setup = await sandbox.exec(
        "mkdir -p src/deep/deeper .git docs && touch src/a.py src/deep/b.py "
        "src/deep/deeper/c.py .git/config .env src/.secret docs/guide.md README.md"
    )
    assert setup.exit_code == 0, setup.output

    root = await run(editor, command="view", path=".")
    assert not root.is_error, root.content
    assert root.content.startswith("Files and directories up to 2 levels deep in .,")
    listed = set(root.content.splitlines()[1:])
    assert {"src", "src/a.py", "src/deep", "docs", "docs/guide.md", "README.md"} <= listed
    assert "src/deep/b.py" not in listed  # deeper than 2 levels
    for hidden in (".git", ".git/config", ".env", "src/.secret"):
        assert hidden not in root.content
    assert root.event == (EventType.TOOL_READ, {"filepath": "."})

    sub = await run(editor, command="view", path="/workspace/src")
    listed = set(sub.content.splitlines()[1:])
    assert {"src", "src/a.py", "src/deep", "src/deep/b.py"} <= listed
    assert "docs" not in listed and ".secret" not in sub.content

    hidden_dir = await run(editor, command="view", path=".git")
    assert ".git/config" in hidden_dir.content.splitlines()


# --- create -----------------------------------------------------------------------------------
async def test_create_writes_the_file_and_its_parent_directories(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    text = "def hello():\n    return 'ünïcode ✓'\n"
    outcome = await run(editor, command="create", path="pkg/sub/mod.py", file_text=text)
    assert not outcome.is_error, outcome.content
    assert outcome.content == "File created successfully at: pkg/sub/mod.py"
    assert outcome.event == (EventType.TOOL_WRITE, {"filepath": "pkg/sub/mod.py", "content": text})
    assert await read(sandbox, "pkg/sub/mod.py") == text

    again = await run(editor, command="create", path="pkg/sub/mod.py", file_text="x = 1\n")
    assert not again.is_error
    assert await read(sandbox, "pkg/sub/mod.py") == "x = 1\n"

    missing = await run(editor, command="create", path="other.py")
    assert_error(missing, "`file_text` is required")
    assert not await exists(sandbox, "/workspace/other.py")


async def test_create_over_a_directory_is_an_error_for_the_model(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    assert (await sandbox.exec("mkdir -p pkg && touch pkg/keep.py")).exit_code == 0
    outcome = await run(editor, command="create", path="pkg", file_text="oops\n")
    assert_error(outcome, "pkg is a directory")
    assert outcome.event is not None and outcome.event[0] == EventType.TOOL_WRITE
    assert await exists(sandbox, "/workspace/pkg/keep.py")


# --- str_replace ------------------------------------------------------------------------------
async def test_str_replace_unique_none_and_multiple(editor: Editor, sandbox: LocalSandbox) -> None:
    source = "x = 1\ny = 2\nx = 1\nz = 3\n"
    await sandbox.write_file("/workspace/m.py", source.encode())

    unique = await run(
        editor, command="str_replace", path="m.py", old_str="y = 2", new_str="y = 20"
    )
    assert not unique.is_error, unique.content
    assert unique.content.startswith("The file m.py has been edited. Here's a snippet of it:\n")
    assert "     2\ty = 20" in unique.content
    assert unique.event == (
        EventType.TOOL_EDIT,
        {"filepath": "m.py", "old_str": "y = 2", "new_str": "y = 20"},
    )
    edited = "x = 1\ny = 20\nx = 1\nz = 3\n"
    assert await read(sandbox, "m.py") == edited

    none = await run(editor, command="str_replace", path="m.py", old_str="w = 9", new_str="w = 0")
    assert_error(none, "did not appear verbatim in m.py")
    assert await read(sandbox, "m.py") == edited

    multiple = await run(editor, command="str_replace", path="m.py", old_str="x = 1", new_str="")
    assert_error(multiple, "Multiple occurrences", "lines [1, 3]")
    assert await read(sandbox, "m.py") == edited

    empty = await run(editor, command="str_replace", path="m.py", old_str="", new_str="a")
    assert_error(empty, "`old_str` is required")

    deleted = await run(editor, command="str_replace", path="m.py", old_str="z = 3\n")
    assert not deleted.is_error, deleted.content
    assert await read(sandbox, "m.py") == "x = 1\ny = 20\nx = 1\n"


# --- insert -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["insert_text", "new_str"])
async def test_insert_at_top_middle_and_end(
    editor: Editor, sandbox: LocalSandbox, key: str
) -> None:
    await sandbox.write_file("/workspace/i.txt", b"a\nb\n")

    top = await run(editor, command="insert", path="i.txt", insert_line=0, **{key: "top"})
    assert not top.is_error, top.content
    assert await read(sandbox, "i.txt") == "top\na\nb\n"
    assert top.event == (
        EventType.TOOL_EDIT,
        {"filepath": "i.txt", "insert_line": 0, "new_str": "top"},
    )

    middle = await run(editor, command="insert", path="i.txt", insert_line=2, **{key: "m1\nm2\n"})
    assert not middle.is_error, middle.content
    assert await read(sandbox, "i.txt") == "top\na\nm1\nm2\nb\n"
    assert "     3\tm1\n     4\tm2" in middle.content

    end = await run(editor, command="insert", path="i.txt", insert_line=5, **{key: "end"})
    assert not end.is_error, end.content
    assert await read(sandbox, "i.txt") == "top\na\nm1\nm2\nb\nend\n"

    past = await run(editor, command="insert", path="i.txt", insert_line=7, **{key: "x"})
    assert_error(past, "insert_line 7 is invalid: i.txt has 6 lines")
    negative = await run(editor, command="insert", path="i.txt", insert_line=-1, **{key: "x"})
    assert_error(negative, "insert_line -1 is invalid")
    assert await read(sandbox, "i.txt") == "top\na\nm1\nm2\nb\nend\n"


async def test_insert_needs_a_line_number_and_text(editor: Editor, sandbox: LocalSandbox) -> None:
    await sandbox.write_file("/workspace/i.txt", b"a\n")
    assert_error(await run(editor, command="insert", path="i.txt", insert_text="x"), "insert_line")
    assert_error(
        await run(editor, command="insert", path="i.txt", insert_line="1", insert_text="x"),
        "insert_line",
    )
    assert_error(await run(editor, command="insert", path="i.txt", insert_line=1), "insert_text")
    assert await read(sandbox, "i.txt") == "a\n"


# --- unreadable, missing, unknown -------------------------------------------------------------
async def test_a_file_that_is_not_utf8_gets_a_clear_error(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    data = b"\xff\xfe\x00binary\x80"
    await sandbox.write_file("/workspace/blob.bin", data)
    assert_error(await run(editor, command="view", path="blob.bin"), "blob.bin is not a UTF-8")
    replace = await run(editor, command="str_replace", path="blob.bin", old_str="binary")
    assert_error(replace, "blob.bin is not a UTF-8")
    insert = await run(editor, command="insert", path="blob.bin", insert_line=0, insert_text="x")
    assert_error(insert, "blob.bin is not a UTF-8")
    assert await sandbox.read_file("/workspace/blob.bin") == data


async def test_a_missing_file_gets_a_clear_error(editor: Editor, sandbox: LocalSandbox) -> None:
    for tool_input in (
        {"command": "view", "path": "nope/missing.py"},
        {"command": "str_replace", "path": "nope/missing.py", "old_str": "a", "new_str": "b"},
        {"command": "insert", "path": "nope/missing.py", "insert_line": 0, "insert_text": "a"},
    ):
        outcome = await editor.run(tool_input)
        assert_error(outcome, "nope/missing.py does not exist")
    assert not await exists(sandbox, "/workspace/nope")


async def test_unknown_commands_and_missing_paths_are_errors(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    await sandbox.write_file("/workspace/a.txt", TEXT.encode())
    assert_error(await run(editor, command="delete", path="a.txt"), "unknown command 'delete'")
    assert_error(await run(editor, path="a.txt"), "unknown command None")
    assert_error(await run(editor, command="undo_edit", path="a.txt"), "undo_edit is not supported")
    assert_error(await run(editor, command="view"), "`path` is required")
    assert_error(await run(editor, command="view", path="  "), "`path` is required")
    assert_error(await run(editor, command="view", path=["a.txt"]), "`path` is required")
    assert await read(sandbox, "a.txt") == TEXT


# --- paths ------------------------------------------------------------------------------------
async def test_relative_and_absolute_workspace_paths_name_the_same_file(
    editor: Editor, sandbox: LocalSandbox
) -> None:
    await sandbox.write_file("/workspace/dir/f.txt", b"hello\n")
    for path in ("dir/f.txt", "/workspace/dir/f.txt", "./dir/../dir/f.txt"):
        outcome = await run(editor, command="view", path=path)
        assert not outcome.is_error, (path, outcome.content)
        assert (
            outcome.content
            == "Here's the result of running `cat -n` on dir/f.txt:\n     1\thello\n"
        )
    assert editor.resolve("/workspace") == ("/workspace", ".")
    assert editor.resolve("a/../b.txt") == ("/workspace/b.txt", "b.txt")


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "/workspace/../etc/passwd",
        "/workspacex/evil",
        "/",
        "/tmp/x",
    ],
)
async def test_paths_outside_the_repository_are_refused(
    editor: Editor, sandbox: LocalSandbox, path: str
) -> None:
    viewed = await run(editor, command="view", path=path)
    assert_error(viewed, "is outside the repository")
    assert "root:" not in viewed.content
    created = await run(editor, command="create", path=path, file_text="pwned\n")
    assert_error(created, "is outside the repository")
    replaced = await run(editor, command="str_replace", path=path, old_str="root", new_str="toor")
    assert_error(replaced, "is outside the repository")
    # Nothing was written anywhere the sandbox can see, nor next to the workspace on the host.
    probe = await sandbox.exec("grep -rls pwned /workspace /tmp /x 2>/dev/null; true")
    assert probe.output == ""
    assert not (sandbox.base / "x").exists()


async def test_a_nul_byte_in_the_path_is_refused(editor: Editor, sandbox: LocalSandbox) -> None:
    await sandbox.write_file("/workspace/a.txt", TEXT.encode())
    for tool_input in (
        {"command": "view", "path": "a.txt\x00.png"},
        {"command": "create", "path": "b.txt\x00", "file_text": "x"},
    ):
        assert_error(await editor.run(tool_input), "NUL byte")
    assert (await sandbox.exec("ls -A /workspace")).output == "a.txt\n"


async def test_symlinks_resolve_inside_the_sandbox_never_on_the_host(
    editor: Editor, sandbox: LocalSandbox, tmp_path: Path
) -> None:
    secret = f"HOST-SECRET-{uuid.uuid4().hex}\n"
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(secret)
    # A file right next to the workspace on the host: `../outside.txt` from it on the host.
    beside = sandbox.base / "outside.txt"
    beside.write_text(secret)
    await sandbox.write_file("/workspace/inside.txt", b"inside\n")
    links = (
        f"ln -s {shlex.quote(str(host_file))} abs-link && ln -s ../outside.txt rel-link"
        " && ln -s inside.txt ok-link"
    )
    made = await sandbox.exec(links)
    assert made.exit_code == 0, made.output

    # A link to a file inside the workspace works: links are followed, in the sandbox's view.
    ok = await run(editor, command="view", path="ok-link")
    assert not ok.is_error and "     1\tinside" in ok.content

    for link in ("abs-link", "rel-link"):
        viewed = await run(editor, command="view", path=link)
        assert viewed.is_error, viewed.content
        assert "HOST-SECRET" not in viewed.content
        replaced = await run(
            editor, command="str_replace", path=link, old_str="HOST-SECRET", new_str="CHANGED"
        )
        assert replaced.is_error and "HOST-SECRET" not in replaced.content
        inserted = await run(editor, command="insert", path=link, insert_line=0, insert_text="X")
        assert inserted.is_error
        await run(editor, command="create", path=link, file_text="OVERWRITTEN\n")

    assert host_file.read_text() == secret
    assert beside.read_text() == secret
    assert await read(sandbox, "inside.txt") == "inside\n"
