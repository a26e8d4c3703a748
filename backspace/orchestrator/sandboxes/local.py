"""The embedded sandbox: a work directory per run, every command under bubblewrap.

Each command runs as `prlimit ... [setpriv ...] bwrap ... bash -c COMMAND`:
- no network (`--unshare-all` gives a fresh network namespace with only its own loopback);
  a sandbox created with a gate gets one door out: the egress proxy's Unix socket for this run,
  bound in at /run/backspace/egress.sock and relayed by socat to 127.0.0.1:3128, where the
  HTTP(S)_PROXY variables point (see egress/proxy.py); a sandbox created with a model gateway
  socket (for an engine such as Claude Code) gets a second one, /run/backspace/model.sock,
  relayed to 127.0.0.1:3129, where ANTHROPIC_BASE_URL points, with a placeholder key: the real
  key stays with the gateway on the host (see gateway/gateway.py),
- its own PID namespace (the whole tree dies with the command), a private /tmp and home,
- `/usr` and a short list of `/etc` files read-only and nothing else of the host: not the
  server's files, its `.env`, its database or its environment (`--clearenv` plus a short
  allowlist); see bwrap.py, which also holds the seccomp filter and passes bubblewrap's options
  through a memfd so that PID 1's command line shows no host path,
- rlimits on address space, processes, file size and open files,
- as root, a cgroup per run (cgroup.py) bounding the run as a whole (memory, processes, CPU),
  and a size-limited tmpfs holding its workspace, /tmp and home, so a full sandbox fills its
  own memory-charged tmpfs, never the disk the database is on; /dev/shm is a small tmpfs.

A sandbox started from a set-up layer (environment/local_layers.py) gets, as root, an overlayfs
on its workspace and home: the layer's directories below, read-only, and the writes above on
the run's tmpfs, so starting costs no copy and nothing the sandbox does reaches the layer. The
overlay's directories are given to mount(8) as /proc/self/fd/N, so its options, which the
sandbox can read in /proc/self/mountinfo, name no host path. Not as root, the layer is copied in.

When the server runs as root, bubblewrap is started as an unprivileged user (`setpriv`), so that
root-owned host files inside the read-only view (such as /etc/shadow) stay unreadable.

File reads and writes for the editor also run inside the sandbox (`cat`), so a symlink the agent
planted resolves in the sandbox's view and can never reach a host file outside the work directory.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from backspace.orchestrator.egress.gate import Gate, Phase
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.egress.proxy import Door, EgressProxy
from backspace.orchestrator.environment.layer import Layer, LayerStore
from backspace.orchestrator.environment.local_layers import LAYER_DIRS, LocalLayerStore
from backspace.orchestrator.errors import (
    SandboxError,
    SandboxLost,
    SandboxUnavailable,
    SeccompUnavailable,
)
from backspace.orchestrator.sandboxes.base import (
    ExecResult,
    OutputCallback,
    OutputCollector,
    run_of,
)
from backspace.orchestrator.sandboxes.bwrap import bwrap_argv
from backspace.orchestrator.sandboxes.cgroup import CgroupLimits, Cgroups, RunCgroup

log = logging.getLogger(__name__)

WORKDIR = "/workspace"
HOME = "/home/agent"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNPRIVILEGED_UID = 65534  # "nobody": used when the server itself runs as root
INNER_UID = 1000
MARK_VARIABLE = "BACKSPACE_SANDBOX_MARK"  # in bubblewrap's own environment: see sandbox_mark
ROOT_MARK_VARIABLE = "BACKSPACE_SANDBOX_ROOT_MARK"  # the same for the provider's root
FILE_MISSING = 44
FILE_IS_DIR = 45
KILL_WAIT = 5.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
DOOR = "/run/backspace/egress.sock"  # the run's egress socket, inside the sandbox
PROXY_PORT = 3128
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
MODEL_DOOR = "/run/backspace/model.sock"  # the run's model gateway socket, inside the sandbox
MODEL_PORT = 3129  # gateway/request.py SANDBOX_PORT
MODEL_URL = f"http://127.0.0.1:{MODEL_PORT}"
PLACEHOLDER_KEY = "backspace-gateway-placeholder"  # all the key a sandbox ever holds


def network_prelude(relays: list[tuple[int, str]]) -> str:
    """A script that starts a socat relay from loopback:PORT to each SOCKET (the sandbox's own
    network namespace has nothing else), then the command once every relay listens, seen in
    /proc/net/tcp (connecting to test it would be a request of its own). $1 is socat, $2 the
    command. socat's default 8 KiB buffer makes a large download three times slower
    (bench/egress.py)."""
    starts = "".join(
        f'"$1" -b 262144 TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr{_options(port)} '
        f"UNIX-CONNECT:{path} \\\n  </dev/null >/dev/null 2>&1 &\n"
        for port, path in relays
    )
    ports = " ".join(f"{port:04X}" for port, _ in relays)
    return f"""{starts}for _ in {{1..500}}; do
  missing=0
  for port in {ports}; do
    found=0
    while read -r _ local _ state _; do
      [ "$local $state" = "0100007F:$port 0A" ] && found=1 && break
    done </proc/net/tcp
    [ $found = 1 ] || missing=1
  done
  [ $missing = 0 ] && break
  sleep 0.01
done
exec bash -c "$2" bash
"""


def _options(port: int) -> str:
    """The model's relay sends each small piece of a streamed answer at once (TCP_NODELAY):
    with Nagle's algorithm against a client's delayed ACK (httpx's), a streamed call took 40 ms more
    (bench/gateway.py)."""
    return ",nodelay" if port == MODEL_PORT else ""


NETWORK_PRELUDE = network_prelude([(PROXY_PORT, DOOR)])


@dataclass(frozen=True)
class LocalLimits:
    memory_mb: int = 4096
    max_processes: int = 512
    max_file_mb: int = 512
    max_open_files: int = 4096
    disk_mb: int = 2048  # workspace, /tmp and home together (a tmpfs: it counts as memory)
    shm_mb: int = 64
    cpus: float | None = None  # None: all of the host's cores (runs still get equal shares)


def sandbox_environment(home: str, path: str = SANDBOX_PATH) -> dict[str, str]:
    """The whole environment a sandboxed command sees: never the server's own."""
    return {
        "PATH": path,
        "HOME": home,
        "USER": "agent",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "PAGER": "cat",
        "GIT_PAGER": "cat",
        "GIT_TERMINAL_PROMPT": "0",
        "CI": "1",
        "NO_COLOR": "1",
        "PIP_PROGRESS_BAR": "off",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "TQDM_DISABLE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def gateway_environment() -> dict[str, str]:
    """What points an engine at the model gateway: a loopback URL and a key that is not one."""
    return {"ANTHROPIC_BASE_URL": MODEL_URL, "ANTHROPIC_API_KEY": PLACEHOLDER_KEY}


def proxy_environment() -> dict[str, str]:
    """What tells pip, npm, curl, git, cargo and go to go through the door."""
    env = {name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    return env


def sandbox_mark(base: Path) -> str:
    """Names a sandbox's processes for the orphan sweep, in bubblewrap's environment.

    The command line no longer names the sandbox directory (bubblewrap reads its options from a
    memfd), and PID 1 in the sandbox is bubblewrap, whose environment the sandbox can read: so
    the mark is a digest of the directory, not the directory itself nor the run id.
    """
    return hashlib.sha256(str(base).encode()).hexdigest()[:24]


def root_mark(root: Path) -> str:
    """Names the processes of every sandbox below a root, also once their directories are gone
    (a sandbox's own mark cannot be recomputed then): a digest too, for the same reason."""
    return sandbox_mark(root)


def default_root(db_path: Path) -> Path:
    """A sandbox root per server database, under the system temp dir (reachable by `nobody`)."""
    key = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"backspace-sandboxes-{key}"


def default_env_cache(db_path: Path) -> Path:
    """The set-up layer cache per server database, next to the default sandbox root."""
    key = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"backspace-env-cache-{key}"


class LocalSandboxProvider:
    name = "local"
    layers: LayerStore | None = None

    def __init__(
        self,
        root: Path,
        limits: LocalLimits = LocalLimits(),
        *,
        allow_unsandboxed: bool = False,
        cgroup_root: Path = CGROUP_ROOT,
        layers: LocalLayerStore | None = None,
        egress: EgressProxy | None = None,
        socat: str = "socat",
        tools: Mapping[str, Path] | None = None,
    ) -> None:
        self.root = root
        # Read-only into every sandbox: sandbox path -> host directory (Claude Code's package).
        self.tools = {inside: host for inside, host in (tools or {}).items() if host.is_dir()}
        self.layers = self._store = layers
        self._leases: dict[Path, tuple[LocalLayerStore, str]] = {}  # run dir -> its layer
        self.egress = egress  # None: sandboxes get no network at all, gate or not
        self.socat = shutil.which(socat, path=SANDBOX_PATH)  # a path inside the sandbox too
        self.limits = limits
        self.cgroup_root = cgroup_root
        self.cgroups: Cgroups | None = None
        self._bwrap_sizes_tmpfs: bool | None = None
        self.allow_unsandboxed = allow_unsandboxed
        self._as_root = os.geteuid() == 0
        self._checked: tuple[bool, str] | None = None
        self.isolated = True

    # --- availability ---------------------------------------------------------------------------
    def check(self) -> tuple[bool, str]:
        """Probe bubblewrap once (a real `bwrap ... true`) and remember the answer."""
        if self._checked is None:
            usable, message = self._probe()
            degraded = self.limits_report()["degraded"]
            if usable and degraded:
                message += f"; limits degraded: {', '.join(degraded)} (see /health)"
            self._checked = usable, message
        return self._checked

    def _cgroups(self) -> Cgroups:
        if self.cgroups is None:
            key = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
            self.cgroups = Cgroups(self.cgroup_root, f"backspace-{key}")
        return self.cgroups

    def limits_report(self) -> dict[str, Any]:
        """The limits each sandbox gets, and those that do not hold here (and why)."""
        cgroups = self._cgroups()
        degraded = cgroups.degraded()
        if not self._tmpfs_disk():
            degraded["disk"] = (
                "the workspace, /tmp and home are directories on the host disk, limited only "
                "per file (RLIMIT_FSIZE): a sandbox can fill that disk; run the server as root "
                "so each run gets a size-limited tmpfs"
            )
            if self.layers is not None:
                degraded["layers"] = (
                    "copied, not overlaid: a sandbox started from a set-up layer gets a copy "
                    "of it (time and disk grow with its size); run the server as root so "
                    "layers are mounted with overlayfs instead"
                )
        if self.isolated and self._shm_bytes() is None:
            degraded["shm"] = (
                "bubblewrap is older than 0.5 and cannot size /dev/shm: it is bounded only by "
                "the run's memory cgroup; install bubblewrap 0.5 or later"
            )
        network = self._network_problem()
        if network is not None:
            degraded["network"] = network
        limits = self.limits
        return {
            "cgroup": cgroups.mode,
            "memory_mb": limits.memory_mb,
            "processes": limits.max_processes,
            "cpus": self._cpus(),
            "disk_mb": limits.disk_mb,
            "shm_mb": limits.shm_mb,
            "file_mb": limits.max_file_mb,
            "degraded": degraded,
        }

    def _network_problem(self) -> str | None:
        if not self.isolated:
            return (
                "unsandboxed: commands reach the network directly, so the [network] allowlists "
                "of .backspace.toml are not enforced"
            )
        if self.socat is None:
            return (
                "`socat` is not installed: sandboxes cannot reach their network door, so no "
                "[network] host can be reached; install the Debian package socat "
                "(apt-get install socat)"
            )
        return None

    def _tmpfs_disk(self) -> bool:
        return self._as_root and self.isolated

    def _cpus(self) -> float:
        return self.limits.cpus or float(os.cpu_count() or 1)

    def _cgroup_limits(self) -> CgroupLimits:
        limits = self.limits
        return CgroupLimits(limits.memory_mb * 1024 * 1024, limits.max_processes, self._cpus())

    def _probe(self) -> tuple[bool, str]:
        try:
            self._make_root()
        except OSError as exc:  # running unsandboxed would not help: run directories live there
            return False, (
                f"the sandbox root {self.root} cannot be used ({exc}): set "
                "BACKSPACE_SANDBOX_ROOT to a directory this server can create and write"
            )
        problem = self._bwrap_problem()
        if problem is None:
            return (
                True,
                "bubblewrap works: commands run isolated; their only network is the egress door",
            )
        self.isolated = False
        if self.allow_unsandboxed:
            return True, (
                f"UNSANDBOXED: {problem}; BACKSPACE_ALLOW_UNSANDBOXED=true runs agent commands "
                "directly on this host, without isolation"
            )
        return False, (
            f"{problem}. Install the Debian package `bubblewrap` (apt-get install bubblewrap) "
            "and allow unprivileged user namespaces, or set BACKSPACE_ALLOW_UNSANDBOXED=true "
            "to run agent commands on this host without isolation (unsafe)"
        )

    def _bwrap_problem(self) -> str | None:
        for tool in ("bwrap", "prlimit") + (("setpriv",) if self._as_root else ()):
            if shutil.which(tool) is None:
                return f"`{tool}` is not installed"
        try:
            # Probe inside the real root (made by _probe): one the sandbox user cannot reach
            # fails here.
            probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=self.root))
        except OSError as exc:
            return f"the sandbox root {self.root} cannot be used ({exc})"
        try:
            self._prepare_dirs(probe)
            with self._command(probe, "true", cwd=WORKDIR) as (argv, fds):
                done = subprocess.run(
                    argv, capture_output=True, timeout=20, check=False, pass_fds=fds
                )
            if done.returncode != 0:
                err = done.stderr.decode(errors="replace").strip()[:300]
                return f"bubblewrap cannot start a sandbox here ({err or done.returncode})"
            return None
        except SeccompUnavailable as exc:
            return str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap cannot start a sandbox here ({exc})"
        finally:
            shutil.rmtree(probe, ignore_errors=True)

    # --- life cycle -----------------------------------------------------------------------------
    async def create(
        self,
        run_id: str,
        *,
        layer: Layer | None = None,
        gate: Gate | None = None,
        gateway: Path | None = None,
    ) -> LocalSandbox:
        """`gateway`: the host side of the run's model gateway socket (ModelGateway.open),
        bound in at /run/backspace/model.sock and relayed to 127.0.0.1:3129 for every command;
        its directory must be one the sandbox user can traverse."""
        usable, message = self.check()
        if not usable:
            raise SandboxUnavailable(message)
        if gateway is not None:
            if not self.isolated:
                raise SandboxError(
                    "the model gateway needs an isolated sandbox (bubblewrap): an engine that "
                    "runs unsandboxed would share the host's loopback; install bubblewrap or "
                    "use the backspace engine"
                )
            if len(os.fsencode(gateway)) > MAX_SOCKET_PATH:
                raise SandboxError(
                    f"the model gateway's socket path is longer than the {MAX_SOCKET_PATH} bytes "
                    "a Unix socket allows: set BACKSPACE_SANDBOX_ROOT to a shorter directory"
                )
        base = self.root / run_id
        try:
            await asyncio.to_thread(self._make_run_dir, base)
        except OSError as exc:
            raise SandboxError(
                f"could not create the sandbox directory: {exc}; check that the sandbox root "
                f"{self.root} (BACKSPACE_SANDBOX_ROOT) is a writable directory with free space"
            ) from exc
        try:
            cgroup = await asyncio.to_thread(self._cgroups().create, run_id, self._cgroup_limits())
        except OSError as exc:
            await asyncio.to_thread(_remove_run_dir, base)
            raise SandboxError(f"could not create the sandbox's cgroup: {exc}") from exc
        if layer is not None:
            try:
                await asyncio.to_thread(self._start_from, base, layer)
            except (OSError, SandboxError) as exc:
                await asyncio.to_thread(self._remove, base)
                if cgroup is not None:
                    await asyncio.to_thread(cgroup.remove)
                if isinstance(exc, SandboxError):
                    raise
                raise SandboxError(
                    f"could not start the sandbox from the set-up layer {layer.key}: {exc}"
                ) from exc
        door = None
        if gate is not None and self.egress is not None and self.isolated:
            owner = UNPRIVILEGED_UID if self._as_root else None
            try:  # in the run's directory: outside the workspace, gone with the run
                door = await asyncio.to_thread(
                    self.egress.open, base / "egress.sock", gate, owner_uid=owner
                )
            except OSError as exc:
                if cgroup is not None:
                    await asyncio.to_thread(cgroup.remove)
                await asyncio.to_thread(self._remove, base)
                hint = ""
                if len(os.fsencode(base / "egress.sock")) > MAX_SOCKET_PATH:
                    hint = (
                        f"; its path is longer than the {MAX_SOCKET_PATH} bytes a Unix socket "
                        "allows: set BACKSPACE_SANDBOX_ROOT to a shorter directory"
                    )
                raise SandboxError(
                    f"could not open the sandbox's network door: {exc}{hint}"
                ) from exc
        return LocalSandbox(self, run_id, base, cgroup, gate=gate, door=door, gateway=gateway)

    def _start_from(self, base: Path, layer: Layer) -> None:
        """Lease the layer, then mount it under the run's workspace and home (copy it in when
        this server cannot mount)."""
        store = self._store
        if store is not None:
            store.lease(layer.key)
            self._leases[base] = (store, layer.key)
        source = Path(layer.location)
        if not all((source / name).is_dir() for name in LAYER_DIRS):
            raise SandboxError(
                f"the set-up layer {layer.key} is gone (evicted from the environment cache "
                "meanwhile?): start the run again",
                retryable=True,
            )
        if self._tmpfs_disk():
            scratch = base / ".layer"
            scratch.mkdir(mode=0o700)
            for name in LAYER_DIRS:
                _mount_overlay(source / name, base / name, scratch, name)
        else:
            for name in LAYER_DIRS:
                _copy_into(source / name, base / name)

    def _remove(self, base: Path) -> None:
        """Delete a run directory, its mounts first; then its layer may be evicted again."""
        _remove_run_dir(base)
        lease = self._leases.pop(base, None)
        if lease is not None:
            store, key = lease
            store.release(key)

    def _make_root(self) -> None:
        """The root, traversable (not listable) by the sandbox user; made again if deleted."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)

    def _make_run_dir(self, base: Path) -> None:
        self._make_root()
        base.mkdir(mode=0o700)
        if self._tmpfs_disk():  # its pages are charged to the memory cgroup of the writer
            size = self.limits.disk_mb * 1024 * 1024
            options = f"size={size},mode=0700,nosuid,nodev"
            try:
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", options, "backspace-sandbox", str(base)],
                    check=True,
                    capture_output=True,
                    timeout=20,
                )
            except subprocess.CalledProcessError as exc:
                base.rmdir()
                raise OSError(f"mount tmpfs: {exc.stderr.decode(errors='replace')}") from exc
        self._prepare_dirs(base)

    def _prepare_dirs(self, base: Path) -> None:
        for sub in ("workspace", "tmp", "home"):
            (base / sub).mkdir(exist_ok=True)
        if self._as_root and self.isolated:
            for path in (base, base / "workspace", base / "tmp", base / "home"):
                os.chown(path, UNPRIVILEGED_UID, UNPRIVILEGED_UID)

    async def cleanup_orphans(self, live_run_ids: set[str]) -> int:
        if not self.root.is_dir():
            return 0
        # Hidden entries are not runs: a `.probe-*` directory is another provider's check in
        # progress (the same root, another server or test), which a sweep must not pull away.
        orphans = [
            e
            for e in self.root.iterdir()
            if not e.name.startswith(".") and run_of(e.name) not in live_run_ids and e.is_dir()
        ]
        await asyncio.to_thread(self._cgroups().sweep, live_run_ids)
        if orphans:
            await asyncio.to_thread(_kill_processes_of, orphans)
        for entry in orphans:
            await asyncio.to_thread(self._remove, entry)
        return len(orphans)

    async def aclose(self) -> None:
        """At shutdown: the egress proxy stops and the (empty) parent cgroups go too."""
        if self.egress is not None:
            await asyncio.to_thread(self.egress.stop)
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.close)

    # --- the command line -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _command(
        self,
        base: Path,
        script: str,
        *,
        cwd: str,
        args: tuple[str, ...] = (),
        door: Path | None = None,
        gateway: Path | None = None,
    ) -> Iterator[tuple[list[str], tuple[int, ...]]]:
        """The argv and the descriptors it needs (closed after the block: start it inside).
        With a `door` (the run's egress socket), it is bound in and the proxy variables set;
        with a `gateway` (the run's model socket), that one and the model's variables."""
        if not self.isolated:
            yield self._argv(base, script, cwd=cwd, args=args), ()
            return
        binds = {"/tmp": base / "tmp", HOME: base / "home", WORKDIR: base / "workspace"}  # noqa: S108 - the sandbox's private /tmp
        env = sandbox_environment(HOME)
        if door is not None:
            binds[DOOR] = door
            env |= proxy_environment()
        if gateway is not None:
            binds[MODEL_DOOR] = gateway
            env |= gateway_environment()
        with bwrap_argv(
            binds,
            cwd=cwd,
            env=env,
            uid=INNER_UID,
            home=HOME,
            shm_bytes=self._shm_bytes(),
            read_only=self.tools,
        ) as (bwrap, fds):
            yield self._argv(base, script, cwd=cwd, args=args, bwrap=bwrap), fds

    def _argv(
        self,
        base: Path,
        script: str,
        *,
        cwd: str,
        args: tuple[str, ...] = (),
        bwrap: list[str] | None = None,
    ) -> list[str]:
        limits = self.limits
        argv = [
            "prlimit",
            f"--as={limits.memory_mb * 1024 * 1024}",
            f"--nproc={self._nproc()}",
            f"--fsize={limits.max_file_mb * 1024 * 1024}",
            f"--nofile={limits.max_open_files}",
            "--core=0",
            "--",
        ]
        if bwrap is None:
            return [*argv, "bash", "-c", script, "bash", *args]
        if self._as_root:
            argv += [
                "setpriv",
                f"--reuid={UNPRIVILEGED_UID}",
                f"--regid={UNPRIVILEGED_UID}",
                "--clear-groups",
                "--",
            ]
        return [*argv, *bwrap, "--", "bash", "-c", script, "bash", *args]

    def _shm_bytes(self) -> int | None:
        """A small /dev/shm (bubblewrap >= 0.5 sizes a tmpfs); else /dev's own, under memory."""
        if self._bwrap_sizes_tmpfs is None:
            self._bwrap_sizes_tmpfs = _bwrap_version() >= (0, 5)
        if not self._bwrap_sizes_tmpfs:
            return None
        return self.limits.shm_mb * 1024 * 1024

    def _nproc(self) -> str:
        """RLIMIT_NPROC counts every sandbox's processes (one uid): the pids cgroup replaces it."""
        if self._cgroups().has("pids"):  # as high as this server may set it
            hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
            return "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        return str(self.limits.max_processes)


class LocalSandbox:
    def __init__(
        self,
        provider: LocalSandboxProvider,
        run_id: str,
        base: Path,
        cgroup: RunCgroup | None = None,
        *,
        gate: Gate | None = None,
        door: Door | None = None,
        gateway: Path | None = None,
    ) -> None:
        self.provider = provider
        self.cgroup = cgroup
        self.gate = gate
        self.door = door
        self.gateway = gateway
        self.id = f"local-{run_id}"
        self.base = base
        self.isolated = provider.isolated
        self.workdir = WORKDIR if self.isolated else str(base / "workspace")
        # Scratch files (bundles) go here; unsandboxed, the run's own directory, removed on close.
        self.tmpdir = "/tmp" if self.isolated else str(base / "tmp")  # noqa: S108
        self._closed = False
        self._procs: set[asyncio.subprocess.Process] = set()

    # --- commands -------------------------------------------------------------------------------
    async def exec(
        self,
        command: str,
        *,
        cwd: str | None = None,
        timeout: float = 120.0,
        max_output: int = 16000,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        collector = OutputCollector(max_output)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        started = time.monotonic()
        script: str = command
        args: tuple[str, ...] = ()
        socat = self.provider.socat
        relays = [(PROXY_PORT, DOOR)] if self.door is not None else []
        if self.gateway is not None:
            relays.append((MODEL_PORT, MODEL_DOOR))
        if relays and socat is not None:
            script = NETWORK_PRELUDE if relays == [(PROXY_PORT, DOOR)] else network_prelude(relays)
            args = (socat, command)
        if self.gate is not None:
            self.gate.running(command)
        try:
            proc = await self._spawn(
                script, cwd=cwd, stdin=stdin is not None, merge=True, args=args, door=True
            )
        except BaseException:
            if self.gate is not None:
                self.gate.running(None)
            raise
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                await self._feed(proc, stdin)
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    text = decoder.decode(chunk)
                    collector.add(text)
                    if on_output is not None and text:
                        on_output(text)
                await proc.wait()
        except TimeoutError:
            timed_out = True
        finally:
            await self._reap(proc)
            if self.gate is not None:
                self.gate.running(None)
        tail = decoder.decode(b"", final=True)
        if tail:
            collector.add(tail)
        output = collector.text()
        exit_code = _exit_code(proc.returncode)
        if exit_code != 0:
            self._check_present()  # bwrap fails when the directory went while it started
        if timed_out:
            output += f"\n[command timed out after {timeout:g} s and was killed]"
            exit_code = 124
        return ExecResult(
            exit_code=exit_code,
            output=output,
            truncated=collector.truncated,
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def _run_bytes(
        self,
        script: str,
        args: tuple[str, ...],
        stdin: bytes | BinaryIO | None,
        limit: int | None,
        stdout: BinaryIO | None = None,
    ) -> tuple[int, bytes, str]:
        """Run a fixed helper script; stdout as bytes (bounded) or into a file, stderr as text."""
        proc = await self._spawn(
            script,
            cwd=self.workdir,
            stdin=stdin
            if not isinstance(stdin, bytes) and stdin is not None
            else stdin is not None,
            stdout=stdout,
            args=args,
        )
        out = b""
        try:
            async with asyncio.timeout(FILE_OP_TIMEOUT):
                await self._feed(proc, stdin if isinstance(stdin, bytes) else None)
                assert proc.stderr is not None
                if proc.stdout is not None:
                    out, err = await asyncio.gather(
                        _read_bounded(proc.stdout, limit), proc.stderr.read(4096)
                    )
                else:
                    err = await proc.stderr.read(4096)
                await proc.wait()
        except TimeoutError as exc:
            raise SandboxError("a file operation in the sandbox timed out") from exc
        finally:
            await self._reap(proc)
        code = _exit_code(proc.returncode)
        if code != 0:
            self._check_present()
        return code, out, err.decode(errors="replace").strip()

    async def _spawn(
        self,
        script: str,
        *,
        cwd: str | None,
        stdin: bool | BinaryIO,
        stdout: BinaryIO | None = None,
        merge: bool = False,
        args: tuple[str, ...] = (),
        door: bool = False,
    ) -> asyncio.subprocess.Process:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        self._check_present()
        inner_cwd = self._inner_path(cwd or self.workdir)
        # bubblewrap (PID 1 inside, whose environment the sandbox can read) starts in / with a
        # fixed PATH: nothing of the server's own working directory or environment.
        env = {"PATH": SANDBOX_PATH}
        host_cwd = "/"
        if not self.isolated:
            path = os.environ.get("PATH", SANDBOX_PATH)
            env = sandbox_environment(str(self.base / "home"), path)
            env["TMPDIR"] = self.tmpdir
            host_cwd = inner_cwd
        env[MARK_VARIABLE] = sandbox_mark(self.base)
        env[ROOT_MARK_VARIABLE] = root_mark(self.provider.root)
        try:
            door_path = self.door.path if door and self.door is not None else None
            with self.provider._command(
                self.base,
                script,
                cwd=inner_cwd,
                args=args,
                door=door_path,
                gateway=self.gateway if door else None,
            ) as (argv, fds):
                if self.cgroup is not None:
                    argv = self.cgroup.enter_argv() + argv
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=stdin
                    if not isinstance(stdin, bool)
                    else subprocess.PIPE
                    if stdin
                    else subprocess.DEVNULL,
                    stdout=stdout if stdout is not None else subprocess.PIPE,
                    stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                    start_new_session=True,
                    env=env,
                    cwd=host_cwd,
                    pass_fds=fds,
                )
        except OSError as exc:
            raise SandboxError(f"could not start a sandboxed command: {exc}") from exc
        self._procs.add(proc)
        return proc

    def _check_present(self) -> None:
        """A directory deleted from outside (a /tmp cleaner, a person) ends the run clearly."""
        if self._closed:  # deleted by close(): what was running was killed, not lost
            return
        if not (self.base / "workspace").is_dir():
            raise SandboxLost(
                f"the sandbox is gone: its directory {self.base} was deleted from outside "
                "backspace (a /tmp cleaner? keep BACKSPACE_SANDBOX_ROOT out of its reach); "
                "start the run again"
            )

    def _inner_path(self, path: str) -> str:
        if self.isolated or path.startswith(str(self.base)):
            return path
        # Unsandboxed mode: sandbox paths are host paths below the workspace.
        if path == WORKDIR or path.startswith(WORKDIR + "/"):
            return str(self.base / "workspace") + path[len(WORKDIR) :]
        return path

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
        if data is None or proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the command's whole process group (bwrap takes its PID namespace with it)."""
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.shield(asyncio.wait_for(proc.wait(), KILL_WAIT))
        finally:
            self._procs.discard(proc)

    # --- files ----------------------------------------------------------------------------------
    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        code, out, err = await self._run_bytes(
            READ_SCRIPT, (self._inner_path(path),), None, max_bytes
        )
        _raise_for_file_op(code, path, err, "read")
        return out

    async def write_file(self, path: str, data: bytes) -> None:
        code, _, err = await self._run_bytes(WRITE_SCRIPT, (self._inner_path(path),), data, 0)
        _raise_for_file_op(code, path, err, "write")

    async def upload(self, local: Path, path: str) -> None:
        """Stream a host file into the sandbox (a bundle, say) without holding it in memory."""
        with local.open("rb") as source:
            code, _, err = await self._run_bytes(WRITE_SCRIPT, (self._inner_path(path),), source, 0)
        _raise_for_file_op(code, path, err, "write")

    async def download(self, path: str, local: Path, *, max_bytes: int) -> None:
        """Stream a sandbox file to the host, refusing more than `max_bytes`."""
        args = (self._inner_path(path), str(max_bytes + 1))
        with local.open("wb") as sink:
            code, _, err = await self._run_bytes(READ_SCRIPT_LIMITED, args, None, None, stdout=sink)
            size = os.fstat(sink.fileno()).st_size
        _raise_for_file_op(code, path, err, "read")
        if size > max_bytes:
            raise SandboxError(f"{path} is larger than the {max_bytes}-byte limit")

    # --- network --------------------------------------------------------------------------------
    async def open_network(self, phase: Phase, hosts: HostList) -> None:
        """From now on the door lets this sandbox's commands reach `hosts` (none when empty)."""
        if self.gate is None:
            if hosts:
                raise SandboxUnavailable(
                    "this sandbox was created without a network gate, so it has no network: "
                    "create it with a gate to open its door"
                )
            return
        if hosts and self.isolated:
            problem = self.provider._network_problem()
            if problem is not None:
                raise SandboxUnavailable(f"the sandbox cannot reach {hosts}: {problem}")
            if self.door is None:
                raise SandboxUnavailable(
                    f"the sandbox cannot reach {hosts}: this server runs no egress proxy"
                )
        self.gate.enter(phase, hosts)

    # --- close ----------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.cgroup is not None:
            # Everything of the run first: a process inside the sandbox that outlives bubblewrap
            # for a moment still holds the command's output pipe, which the reap waits for.
            await asyncio.to_thread(self.cgroup.kill_all)
        for proc in list(self._procs):
            await self._reap(proc)
        if self.door is not None:
            await asyncio.to_thread(self.door.close)
        await asyncio.to_thread(self.provider._remove, self.base)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)


READ_SCRIPT = (
    'if [ -d "$1" ]; then exit 45; fi; if [ ! -e "$1" ]; then exit 44; fi; exec cat -- "$1"'
)
READ_SCRIPT_LIMITED = 'if [ -d "$1" ]; then exit 45; fi; if [ ! -e "$1" ]; then exit 44; fi; exec head -c "$2" -- "$1"'
WRITE_SCRIPT = 'if [ -d "$1" ]; then exit 45; fi; mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
FILE_OP_TIMEOUT = 300.0


def _kill_processes_of(sandboxes: list[Path]) -> None:
    """SIGKILL every process marked as one of these sandboxes' (bubblewrap, or an unsandboxed
    command: see sandbox_mark), or whose command line names one of their directories.

    bubblewrap's --die-with-parent ends a sandbox when the server dies, but not always before
    the next server starts (seen twice in the crash tests on a loaded machine): the sweep of
    a crashed server's sandboxes does not count on it.
    """
    paths = [str(path).encode() + b"/" for path in sandboxes]
    marks = {f"{MARK_VARIABLE}={sandbox_mark(path)}".encode() for path in sandboxes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:  # another user's process
            environ = set()
        if any(path in cmdline for path in paths) or marks & environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


def _bwrap_version() -> tuple[int, ...]:
    """`bwrap --version` as numbers ("bubblewrap 0.8.0" -> (0, 8, 0)); () if unknown."""
    try:
        out = subprocess.run(
            ["bwrap", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        return tuple(int(part) for part in out.split()[-1].split("."))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return ()


def _remove_run_dir(base: Path) -> None:
    """Unmount everything mounted at or below the run directory, deepest first (a layer's
    overlays, then the run's tmpfs, whose memory is freed), then delete what is left."""
    for mount_point in mounts_below(base):
        done = subprocess.run(["umount", mount_point], capture_output=True, check=False)
        if done.returncode != 0:  # still busy: detach it; it goes with its last user
            subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def mounts_below(base: Path) -> list[str]:
    """The mount points at or below `base` in this process's mount namespace, deepest first."""
    top = os.path.abspath(base)
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return [top] if os.path.ismount(top) else []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    # A point mounted twice is listed twice: each umount takes the topmost mount off.
    return sorted(found, key=lambda point: point.count("/"), reverse=True)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_overlay(lower: Path, target: Path, scratch: Path, name: str) -> None:
    """Mount `lower` read-only under `target`, its writes kept in `scratch` (the run's tmpfs).

    The upper directory takes the lower one's owner and mode, so the sandbox user writes there
    as in the layer. The directories reach mount(8) as descriptors: the options show no path.
    """
    upper, work = scratch / f"{name}-upper", scratch / f"{name}-work"
    info = lower.stat()
    upper.mkdir(mode=0o700)
    work.mkdir(mode=0o700)
    os.chown(upper, info.st_uid, info.st_gid)
    os.chmod(upper, info.st_mode & 0o7777)
    fds = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in (lower, upper, work)]
    try:
        lowerdir, upperdir, workdir = (f"/proc/self/fd/{fd}" for fd in fds)
        options = f"lowerdir={lowerdir},upperdir={upperdir},workdir={workdir},nosuid,nodev"
        done = subprocess.run(
            ["mount", "-t", "overlay", "-o", options, "backspace-layer", str(target)],
            capture_output=True,
            timeout=20,
            check=False,
            pass_fds=fds,
        )
    finally:
        for fd in fds:
            os.close(fd)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[:300]
        raise OSError(f"mount overlay on {name}: {err or done.returncode}")


def _copy_into(source: Path, target: Path) -> None:
    """A layer copied in (no overlay without root): its contents into the run's directory."""
    done = subprocess.run(
        ["cp", "-a", "--", f"{source}/.", str(target)],
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[:300]
        raise OSError(f"copying the layer's {source.name} in: {err}")


def _raise_for_file_op(code: int, path: str, err: str, verb: str) -> None:
    if code == FILE_MISSING:
        raise FileNotFoundError(path)
    if code == FILE_IS_DIR:
        raise IsADirectoryError(path)
    if code != 0:
        raise SandboxError(f"could not {verb} {path}: {err or f'exit {code}'}")


async def _read_bounded(stream: asyncio.StreamReader, limit: int | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        size += len(chunk)
        if limit is not None and size > limit:
            raise SandboxError(f"the file is larger than the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _exit_code(returncode: int | None) -> int:
    if returncode is None:
        return -1
    return 128 - returncode if returncode < 0 else returncode
