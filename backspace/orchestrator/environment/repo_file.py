"""The repository's `.backspace.toml`: how to set its environment up, what the network may
reach in each phase, and how backspace verifies a change.

```toml
[setup]
run = "python -m venv .venv && .venv/bin/pip install -e '.[dev]'"
cache_key = ["pyproject.toml", "requirements*.txt"]
maintenance = ".venv/bin/pip install -e . --no-deps"
[network]
setup = ["pypi.org", "files.pythonhosted.org"]
agent = []
[verify]
run = ["ruff check .", "pytest -q"]
```

The file is hostile input like the rest of the repository: it is size-limited, parsed with the
standard library, checked field by field (unknown keys are mistakes, not extensions), and a bad
one ends the run at once with the line and the reason. It can only ask: the operator's
BACKSPACE_EGRESS_ALLOW and BACKSPACE_AGENT_NETWORK decide what a phase really reaches.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backspace.orchestrator.egress.hosts import HostList, HostListError
from backspace.orchestrator.errors import RunFailure

FILE_NAME = ".backspace.toml"
MAX_BYTES = 64 * 1024
MAX_COMMAND = 8000

Command = Annotated[str, Field(min_length=1, max_length=MAX_COMMAND)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Setup(_Strict):
    run: Command
    cache_key: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=32
    )
    maintenance: Command | None = None

    @field_validator("cache_key")
    @classmethod
    def _relative_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith(("/", ":")) or ".." in pattern.split("/") or "\0" in pattern:
                raise ValueError(
                    f"{pattern!r}: write a path or glob relative to the repository root "
                    "(no leading / or :, no ..)"
                )
        return patterns


class _Network(_Strict):
    setup: list[str] = Field(default_factory=list)
    agent: list[str] = Field(default_factory=list)

    @field_validator("setup", "agent")
    @classmethod
    def _host_names(cls, entries: list[str]) -> list[str]:
        try:
            return list(HostList.parse(entries))
        except HostListError as exc:
            raise ValueError(str(exc)) from None


class _Verify(_Strict):
    run: list[Command] = Field(min_length=1, max_length=20)

    @field_validator("run", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class _File(_Strict):
    setup: _Setup | None = None
    network: _Network = Field(default_factory=_Network)
    verify: _Verify | None = None


@dataclass(frozen=True)
class RepoEnvironment:
    """What a repository asks for; `RepoEnvironment()` is a repository without the file."""

    present: bool = False
    setup: str | None = None
    cache_key: tuple[str, ...] = ()
    maintenance: str | None = None
    setup_hosts: HostList = field(default_factory=HostList)
    agent_hosts: HostList = field(default_factory=HostList)
    verify: tuple[str, ...] = ()


def bad_repo_file(message: str) -> RunFailure:
    """A `.backspace.toml` that cannot be used; the message names the line and the fix."""
    return RunFailure("bad_repo_file", f"{FILE_NAME}: {message}")


def parse_repo_file(data: bytes) -> RepoEnvironment:
    """The file's content as a RepoEnvironment, or RunFailure `bad_repo_file` saying where and why."""
    if len(data) > MAX_BYTES:
        raise bad_repo_file(f"the file is larger than {MAX_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise bad_repo_file(f"line {line}: the file is not UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad_repo_file(f"not valid TOML: {exc}") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(str(part) for part in first["loc"])
        where = ".".join(location)
        line = line_of(text, location)
        raise bad_repo_file(f"line {line}: {where}: {_reason(first)}") from None
    setup = parsed.setup
    if setup is None and (parsed.network.setup):
        line = line_of(text, ("network", "setup"))
        raise bad_repo_file(f"line {line}: network.setup is given but there is no [setup] run")
    return RepoEnvironment(
        present=True,
        setup=setup.run if setup else None,
        cache_key=tuple(setup.cache_key) if setup else (),
        maintenance=setup.maintenance if setup else None,
        setup_hosts=HostList(tuple(parsed.network.setup)),
        agent_hosts=HostList(tuple(parsed.network.agent)),
        verify=tuple(parsed.verify.run) if parsed.verify else (),
    )


def _reason(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (the file has [setup] run, cache_key, maintenance; [network] setup, agent; [verify] run)"
    if error["type"] == "missing":
        return "is required"
    return message


def line_of(text: str, location: tuple[str, ...]) -> int:
    """The line where a key is written: its table's header, then the key inside it, else the
    nearest thing found. Line numbers are 1-based; 1 when nothing matches."""
    lines = text.splitlines()
    names = [part for part in location if not part.isdigit()]
    if not names:
        return 1
    table, *keys = names
    found = 1
    start = 0
    header = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]")
    for number, line in enumerate(lines):
        if header.match(line):
            found, start = number + 1, number + 1
            break
    else:  # a dotted key (`setup.run = ...`) or an inline table
        dotted = re.compile(rf"^\s*{re.escape(table)}\s*[.=]")
        for number, line in enumerate(lines):
            if dotted.match(line):
                return number + 1
        if not keys:
            return found
    if keys:
        key = re.compile(rf"^\s*{re.escape(keys[0])}\s*=")
        for number in range(start, len(lines)):
            if re.match(r"^\s*\[", lines[number]):
                break
            if key.match(lines[number]):
                return number + 1
    return found
