"""One cgroup per run: memory, process and CPU limits for a sandbox as a whole.

rlimits hold per process, and RLIMIT_NPROC per uid, which every sandbox shares: a run's
processes together could take any amount of memory, and one run's processes could stop another
run's from starting. A cgroup bounds the run as a whole (its tmpfs and /dev/shm pages too, since
those are charged to the writer's memory cgroup), and each run's cgroup gets its own CPU share.

Works with cgroup v2 when the host delegates the memory, pids and cpu controllers to us, else
with the v1 `memory`, `pids` and `cpu` hierarchies. Run groups go below the server's own group
in each hierarchy, so a limit placed on the server itself still holds for its sandboxes.
Where none can be had, `Cgroups.degraded` says which limits are missing and why.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backspace.orchestrator.sandboxes.base import run_of

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
KILL_DEADLINE = 5.0

# Put the shell itself into the run's groups, then become the command: everything it starts
# (prlimit, setpriv, bwrap and the agent's processes) is born inside the groups.
ENTER_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'

WHY_NOT = {
    "memory": "no memory cgroup: only a per-process address-space rlimit holds, so a "
    "sandbox's processes, tmpfs and /dev/shm together are not bounded",
    "processes": "no pids cgroup: RLIMIT_NPROC counts the processes of every sandbox together "
    "(they share one uid), so one run can stop another's commands from starting",
    "cpu": "no cpu cgroup: a run with many processes gets a larger share of the CPU",
}
LIMIT_OF = {"memory": "memory", "pids": "processes", "cpu": "cpu"}


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    pids: int
    cpus: float


@dataclass(frozen=True)
class RunCgroup:
    """A run's group in each hierarchy (one directory with v2)."""

    dirs: tuple[Path, ...]

    def enter_argv(self) -> list[str]:
        """An argv prefix that runs the rest of the command inside this group."""
        files = [str(d / "cgroup.procs") for d in self.dirs]
        return ["bash", "-c", ENTER_SCRIPT, "bash", *files, "--"]

    def kill_all(self) -> None:
        """SIGKILL every process in the group, again until none is left (they may fork)."""
        deadline = time.monotonic() + KILL_DEADLINE
        while time.monotonic() < deadline:
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        log.warning("processes still in %s after SIGKILL", self.dirs[0])

    def remove(self) -> None:
        """Kill what is left, then delete the groups (a group goes once its processes are reaped)."""
        self.kill_all()
        for directory in self.dirs:
            deadline = time.monotonic() + KILL_DEADLINE
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning("could not remove the cgroup %s: %s", directory, exc)
                        break
                    time.sleep(0.05)
        for parent in {d.parent for d in self.dirs}:  # the last run out removes the parent
            with contextlib.suppress(OSError):
                parent.rmdir()

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return pids


class Cgroups:
    """The groups of one sandbox root's runs: `<own group>/<name>/<run id>` in each hierarchy."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.mode: Literal["v2", "v1", "none"] = "none"
        self.parents: dict[str, Path] = {}  # controller -> the directory run groups go in
        self.problem = ""
        try:
            self._detect()
        except OSError as exc:
            self.problem = str(exc)
            self.parents = {}
        if not self.parents:
            self.mode = "none"

    # --- detection ------------------------------------------------------------------------------
    def _detect(self) -> None:
        own = _own_groups()
        for candidate in (self.root, self.root / "unified"):
            controllers = _read_words(candidate / "cgroup.controllers")
            if "memory" in controllers and "pids" in controllers:
                self._detect_v2(candidate, own.get("", "/"), controllers)
                if self.parents:
                    return
        self._detect_v1(own)

    def _detect_v2(self, mount: Path, own: str, controllers: set[str]) -> None:
        """Use our own group's subtree: enable the controllers for our children there.

        v2 lets a group hand controllers to children only while no process sits in it, so
        when this server is in its (delegated) group it first moves into a leaf of its own.
        """
        group = mount / own.lstrip("/")
        parent = group / self.name
        wanted = [c for c in CONTROLLERS if c in controllers]
        enable = " ".join(f"+{c}" for c in wanted)
        try:
            if not set(wanted) <= _read_words(group / "cgroup.subtree_control"):
                try:
                    (group / "cgroup.subtree_control").write_text(enable)
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    leaf = group / "backspace-server"
                    leaf.mkdir(exist_ok=True)
                    (leaf / "cgroup.procs").write_text(str(os.getpid()))
                    (group / "cgroup.subtree_control").write_text(enable)
            self.mode = "v2"
            self._make_parent(parent)
            enabled = _read_words(parent / "cgroup.subtree_control")
            with contextlib.suppress(OSError):
                parent.rmdir()
        except OSError as exc:
            self.mode = "none"
            self.problem = f"cgroup v2 at {mount} is not delegated to this server ({exc})"
            return
        self.parents = {c: parent for c in wanted if c in enabled}

    def _detect_v1(self, own: dict[str, str]) -> None:
        problems = []
        for controller in CONTROLLERS:
            mount = self.root / controller
            if not (mount / "cgroup.procs").is_file():
                problems.append(f"no {controller} hierarchy at {mount}")
                continue
            parent = mount / own.get(controller, "/").lstrip("/") / self.name
            try:
                self._make_parent(parent)
                with contextlib.suppress(OSError):
                    parent.rmdir()  # made again by the first run: none is left behind
            except OSError as exc:
                problems.append(f"cannot create a group in {mount} ({exc.strerror})")
                continue
            self.parents[controller] = parent
        if self.parents:
            self.mode = "v1"
        self.problem = "; ".join(problems)

    def _make_parent(self, parent: Path) -> None:
        """The directory run groups go in, made on demand (the last run out removes it)."""
        parent.mkdir(exist_ok=True)
        if self.mode == "v2":
            enable = " ".join(f"+{c}" for c in CONTROLLERS if c in _controllers(parent))
            (parent / "cgroup.subtree_control").write_text(enable)
        else:
            with contextlib.suppress(OSError):  # v1 memory: count children against the parent
                (parent / "memory.use_hierarchy").write_text("1")

    # --- what holds -----------------------------------------------------------------------------
    def degraded(self) -> dict[str, str]:
        """Each limit no cgroup enforces here: name -> why, and what would fix it."""
        fix = (
            "run the server as root with cgroup v1 memory, pids and cpu hierarchies, or with "
            "those controllers delegated to it in cgroup v2"
        )
        where = f" ({self.problem})" if self.problem else ""
        return {
            LIMIT_OF[c]: f"{WHY_NOT[LIMIT_OF[c]]}{where}; {fix}"
            for c in CONTROLLERS
            if c not in self.parents
        }

    def has(self, controller: str) -> bool:
        return controller in self.parents

    # --- run groups -----------------------------------------------------------------------------
    def create(self, run_id: str, limits: CgroupLimits) -> RunCgroup | None:
        """Make the run's groups with their limits; None where no cgroup can be had."""
        if not self.parents:
            return None
        dirs: dict[Path, None] = {}
        for parent in self.parents.values():
            dirs[parent / run_id] = None
        group = RunCgroup(tuple(dirs))
        try:
            for attempt in range(3):  # another run's close may remove a parent meanwhile
                try:
                    for directory in group.dirs:
                        self._make_parent(directory.parent)
                        directory.mkdir(exist_ok=True)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            self._apply(run_id, limits)
        except OSError:
            group.remove()
            raise
        return group

    def _apply(self, run_id: str, limits: CgroupLimits) -> None:
        parents = self.parents
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        if self.mode == "v2":
            group = next(iter(parents.values())) / run_id
            if "memory" in parents:
                _write(group / "memory.max", str(limits.memory_bytes))
                _write(group / "memory.swap.max", "0", optional=True)
            if "pids" in parents:
                _write(group / "pids.max", str(limits.pids))
            if "cpu" in parents:
                _write(group / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        if "memory" in parents:
            group = parents["memory"] / run_id
            _write(group / "memory.limit_in_bytes", str(limits.memory_bytes))
            _write(group / "memory.memsw.limit_in_bytes", str(limits.memory_bytes), optional=True)
        if "pids" in parents:
            _write(parents["pids"] / run_id / "pids.max", str(limits.pids))
        if "cpu" in parents:
            group = parents["cpu"] / run_id
            _write(group / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(group / "cpu.cfs_quota_us", str(quota))

    def close(self) -> None:
        """Remove this root's parent groups if no run is left in them (normally none is left)."""
        for parent in set(self.parents.values()):
            with contextlib.suppress(OSError):
                parent.rmdir()

    def sweep(self, live_run_ids: set[str]) -> int:
        """Kill and remove the groups of runs that are not live (left by a crash)."""
        names: set[str] = set()
        for parent in set(self.parents.values()):
            with contextlib.suppress(OSError):
                names.update(e.name for e in parent.iterdir() if e.is_dir())
        orphans = {name for name in names if run_of(name) not in live_run_ids}
        for name in orphans:
            RunCgroup(tuple({p / name: None for p in self.parents.values()})).remove()
        return len(orphans)


def _write(path: Path, value: str, *, optional: bool = False) -> None:
    try:
        path.write_text(value)
    except OSError:
        if not optional:
            raise


def _controllers(group: Path) -> set[str]:
    return _read_words(group / "cgroup.controllers")


def _read_words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def _own_groups() -> dict[str, str]:
    """This process's group per v1 controller (and "" for v2), from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(",") if names else [""]:
                groups[name] = path
    return groups
