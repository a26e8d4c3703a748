"""Host lists: what a repository asks to reach, and the most an operator allows.

An entry is a DNS name (`pypi.org`) or a wildcard for its subdomains (`*.pythonhosted.org`, which
matches `files.pythonhosted.org` but not `pythonhosted.org` itself). Addresses are not entries:
an internal mirror is reached by name through BACKSPACE_EGRESS_RESOLVE. Names are compared
lower-case and without a trailing dot, so `PyPI.org.` is `pypi.org`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
NAME = re.compile(rf"{LABEL}(\.{LABEL})*")
MAX_ENTRIES = 64


class HostListError(ValueError):
    """An entry that is not a host name or a `*.` wildcard; the message says which and why."""


def normalise(host: str) -> str:
    return host.strip().lower().rstrip(".")


def check_entry(entry: str) -> str:
    """The entry in its normal form, or HostListError saying what is wrong with it."""
    value = normalise(entry)
    name = value[2:] if value.startswith("*.") else value
    if not value:
        raise HostListError("an empty host name")
    if "*" in name:
        raise HostListError(f"{entry!r}: a wildcard is allowed only as a leading `*.`")
    if _looks_like_address(name):
        raise HostListError(
            f"{entry!r} is an address: list host names; map a name to an internal address "
            "with BACKSPACE_EGRESS_RESOLVE"
        )
    if len(name) > 253 or not NAME.fullmatch(name):
        raise HostListError(f"{entry!r} is not a host name")
    if value.startswith("*.") and "." not in name:
        raise HostListError(f"{entry!r} is too wide: a wildcard needs at least two labels")
    return value


def _looks_like_address(name: str) -> bool:
    return ":" in name or name.startswith("[") or bool(re.fullmatch(r"[0-9.]+|0x[0-9a-f.x]+", name))


@dataclass(frozen=True)
class HostList:
    """An ordered set of host entries, checked; `allows(host)` is the whole of its meaning."""

    entries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostList:
        seen: dict[str, None] = {}
        for entry in entries:
            seen[check_entry(entry)] = None
        if len(seen) > MAX_ENTRIES:
            raise HostListError(f"{len(seen)} hosts: at most {MAX_ENTRIES} may be listed")
        return cls(tuple(seen))

    @classmethod
    def from_setting(cls, value: str) -> HostList:
        """A comma- or space-separated setting, as in BACKSPACE_EGRESS_ALLOW."""
        return cls.parse(part for part in re.split(r"[,\s]+", value) if part)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def allows(self, host: str) -> bool:
        name = normalise(host)
        return any(_matches(entry, name) for entry in self.entries)

    def cut_to(self, ceiling: HostList) -> tuple[HostList, tuple[str, ...]]:
        """(the entries the ceiling allows, the entries it cut). A wildcard is kept only when the
        ceiling allows every name it could match: `*.a.org` under `*.a.org` or `*.org`."""
        kept: list[str] = []
        cut: list[str] = []
        for entry in self.entries:
            (kept if ceiling.covers(entry) else cut).append(entry)
        return HostList(tuple(kept)), tuple(cut)

    def covers(self, entry: str) -> bool:
        if not entry.startswith("*."):
            return self.allows(entry)
        return any(
            mine.startswith("*.") and (entry == mine or entry.endswith(mine[1:]))
            for mine in self.entries
        )

    def __str__(self) -> str:
        return ", ".join(self.entries) if self.entries else "(none)"


def _matches(entry: str, name: str) -> bool:
    if entry.startswith("*."):
        return name.endswith(entry[1:]) and len(name) > len(entry) - 1
    return name == entry


@dataclass(frozen=True)
class AddressMap:
    """BACKSPACE_EGRESS_RESOLVE: a name the door connects to a fixed address (an internal
    mirror), whatever DNS says and even when the address is private or loopback."""

    targets: dict[str, tuple[str, int]]

    @classmethod
    def parse(cls, value: str) -> AddressMap:
        targets: dict[str, tuple[str, int]] = {}
        for item in (part for part in re.split(r"[,\s]+", value) if part):
            name, sep, target = item.partition("=")
            host, colon, port = target.rpartition(":")
            if not sep or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise HostListError(
                    f"{item!r}: write name=host:port, for example pypi.internal=10.0.0.5:8080"
                )
            targets[check_entry(name)] = (host.strip("[]"), int(port))
        return cls(targets)

    def get(self, host: str) -> tuple[str, int] | None:
        return self.targets.get(normalise(host))
