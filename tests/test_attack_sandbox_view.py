"""Attacks from inside the sandbox on its view of the host and on the kernel (issue 12: 3, 6, 10).

Real bubblewrap, real syscalls (python3's ctypes inside the sandbox), a real server started with
`python -m backspace`. Each test is the attack; it passes when the attack fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyseccomp
import pytest

from backspace.config import SettingsError, load_settings
from backspace.orchestrator.sandboxes.base import SandboxLost
from backspace.orchestrator.sandboxes.local import SANDBOX_PATH, LocalSandbox, LocalSandboxProvider
from tests.conftest import make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text
from tests.helpers import processes_running
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import ROOT, free_port
from tests.sse import post_run

SECRET = "sk-ant-api03-VIEWATTACK-" + uuid.uuid4().hex


# --- item 3: the sandbox's view of the host ---------------------------------------------------
@pytest.fixture
def installed_under_opt_and_etc() -> Iterator[tuple[Path, Path]]:
    """A service installed as the README shows: /opt/..., with .env and backspace.db beside it,
    world-readable as files are by default; and a config file of some other service in /etc."""
    mark = uuid.uuid4().hex[:10]
    opt = Path("/opt") / f"backspace-attack-{mark}"
    etc = Path("/etc") / f"backspace-attack-{mark}.conf"
    opt.mkdir(parents=True)
    try:
        (opt / ".env").write_text(f"ANTHROPIC_API_KEY={SECRET}\n")
        with sqlite3.connect(opt / "backspace.db") as db:
            db.execute("CREATE TABLE runs (prompt TEXT)")
            db.execute("INSERT INTO runs VALUES (?)", (f"another run's prompt {SECRET}",))
        db.close()
        for path in (opt / ".env", opt / "backspace.db"):
            path.chmod(0o644)
        opt.chmod(0o755)
        etc.write_text(f"password={SECRET}\n")
        etc.chmod(0o644)
        yield opt, etc
    finally:
        shutil.rmtree(opt, ignore_errors=True)
        etc.unlink(missing_ok=True)


async def test_the_agent_cannot_read_dotenv_or_the_database_under_opt_nor_etc(
    sandbox: LocalSandbox, installed_under_opt_and_etc: tuple[Path, Path]
) -> None:
    opt, etc = installed_under_opt_and_etc
    steal = await sandbox.exec(
        f"cat {opt}/.env {opt}/backspace.db {etc}; cat /etc/backspace-attack-* 2>/dev/null; "
        "ls -A /opt /srv /var /root 2>&1; true"
    )
    assert SECRET not in steal.output
    assert "VIEWATTACK" not in steal.output
    for gone in ("/opt", "/srv", "/var", "/root"):
        assert f"cannot access '{gone}'" in steal.output, steal.output
    assert (await sandbox.exec("ls -A /home")).output.split() == ["agent"]


async def test_etc_holds_only_the_short_list(sandbox: LocalSandbox) -> None:
    listing = set((await sandbox.exec("ls -A /etc")).output.split())
    allowed = {
        "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "hosts", "host.conf",
        "resolv.conf", "nsswitch.conf", "gai.conf", "protocols", "services", "localtime",
        "timezone", "mime.types", "os-release", "debian_version", "python3", "python3.11",
        "python3.12", "python3.13", "passwd", "group",
    }  # fmt: skip
    assert listing <= allowed, listing - allowed
    assert {"passwd", "group", "ld.so.cache", "hosts"} <= listing
    assert "shadow" not in listing and "gitconfig" not in listing
    assert (await sandbox.exec("ls -A /etc/ssl")).output.split() == ["certs", "openssl.cnf"]


async def test_passwd_and_group_are_synthesised(sandbox: LocalSandbox) -> None:
    result = await sandbox.exec("cat /etc/passwd; echo ---; cat /etc/group; echo ---; id -un")
    passwd, group, name = result.output.split("---\n")
    host_users = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()}
    inside_users = {line.split(":")[0] for line in passwd.splitlines()}
    assert inside_users == {"root", "agent", "nobody"}
    assert host_users - inside_users, "the host's user list leaked in"
    assert "agent:x:1000:" in group
    assert name == "agent\n"


async def test_commands_still_work_in_the_narrow_view(sandbox: LocalSandbox) -> None:
    """Certificates, the loader, Python, git and name resolution of localhost all still work."""
    script = (
        "import ssl, socket, subprocess; "
        "ctx = ssl.create_default_context(); assert ctx.cert_store_stats()['x509_ca'] > 0; "
        "print(socket.gethostbyname('localhost')); "
        "print(subprocess.run(['git', '--version'], capture_output=True, text=True).stdout)"
    )
    result = await sandbox.exec(f'python3 -c "{script}" 2>&1; ls /usr/bin/python3')
    assert result.exit_code == 0, result.output
    assert result.output.startswith("127.0.0.1\ngit version"), result.output
    assert "Error" not in result.output


def backspace(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "PYTHONPATH": str(ROOT),
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, "-m", "backspace", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("command", "case", "words"),
    [
        ("serve", "cwd", "the working directory /usr lies inside /usr"),
        ("run", "db", "BACKSPACE_DB /usr/share/backspace-attack.db lies inside /usr"),
        ("run", "root", "BACKSPACE_SANDBOX_ROOT /usr/lib/backspace-attack lies inside /usr"),
        ("serve", "dotenv", ".env lies inside /etc/hosts"),
    ],
)
@pytest.mark.e2e  # it starts the real server or the CLI
def test_the_server_refuses_to_start_inside_the_view(
    tmp_path: Path, command: str, case: str, words: str
) -> None:
    """Each CLI entry point, each kind of path (one process each: they take seconds to start)."""
    cwd = tmp_path
    env = {"BACKSPACE_DB": str(tmp_path / "backspace.db")}
    if case == "cwd":
        cwd = Path("/usr")
    elif case == "db":
        env["BACKSPACE_DB"] = "/usr/share/backspace-attack.db"
    elif case == "root":
        env["BACKSPACE_SANDBOX_ROOT"] = "/usr/lib/backspace-attack"
    else:
        (tmp_path / ".env").symlink_to("/etc/hosts")
    args = ("run", "local:x", "a change") if command == "run" else ("serve",)
    try:
        done = backspace(*args, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`backspace {command}` started with its {case} inside the sandbox's view")
    assert done.returncode == 2, done.stderr
    message = done.stderr.replace(str(tmp_path), "")
    assert words.replace(str(tmp_path), "") in message, done.stderr
    assert "every sandboxed command can read" in done.stderr
    assert not Path("/usr/share/backspace-attack.db").exists()
    assert not Path("/usr/lib/backspace-attack").exists()


def test_the_app_factory_refuses_too(tmp_path: Path) -> None:
    from backspace.app import create_app

    settings = load_settings(BACKSPACE_DB="/usr/share/backspace-attack.db")
    with pytest.raises(SettingsError, match=r"BACKSPACE_DB .* lies inside /usr"):
        create_app(settings)
    assert not Path("/usr/share/backspace-attack.db").exists()


# --- item 6: the kernel inside the sandbox ----------------------------------------------------
CLONE_SIGHAND = 0x00000800
NAMESPACES = {
    "NEWNS": 0x00020000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": 0x10000000,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}
BAD = 1  # an address the kernel cannot read: calls fail with EFAULT before any permission check
NR = {
    name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    for name in (
        "unshare", "setns", "clone", "clone3", "mount", "umount2", "pivot_root", "chroot",
        "keyctl", "add_key", "request_key", "bpf", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "userfaultfd", "perf_event_open", "ptrace", "process_vm_readv",
        "kexec_load", "init_module", "finit_module", "open_tree", "fsopen",
    )
}  # fmt: skip

# name: (syscall, arguments, the errno the kernel gives without a filter or None for success).
# Arguments are chosen so that, unfiltered, the call fails early for another reason (or works):
# only the filter can make it EPERM. (On this kernel bpf says EINVAL, kexec and modules ENOSYS;
# where a kernel says EPERM for them anyway, the filter is a second layer there.)
PROBES: dict[str, tuple[str, tuple[int, ...]]] = {
    "unshare(NEWUSER|NEWNET)": ("unshare", (NAMESPACES["NEWUSER"] | NAMESPACES["NEWNET"],)),
    "unshare(NEWNS)": ("unshare", (NAMESPACES["NEWNS"],)),
    "setns": ("setns", (2**32 - 1, 0)),
    **{
        f"clone({flag})": ("clone", (value | CLONE_SIGHAND, 0, 0, 0, 0))
        for flag, value in NAMESPACES.items()
    },
    "mount": ("mount", (0, 0, BAD, 0, 0)),
    "umount2": ("umount2", (BAD, 0xFFFF)),
    "pivot_root": ("pivot_root", (BAD, BAD)),
    "chroot": ("chroot", (BAD,)),
    "open_tree": ("open_tree", (2**32 - 1, BAD, 0)),
    "fsopen": ("fsopen", (BAD, 0)),
    "keyctl": ("keyctl", (0, 2**32 - 2, 0)),
    "add_key": ("add_key", (BAD, BAD, 0, 0, 0)),
    "request_key": ("request_key", (BAD, BAD, 0, 0)),
    "bpf": ("bpf", (9999, 0, 0)),
    "io_uring_setup": ("io_uring_setup", (1, BAD)),
    "io_uring_enter": ("io_uring_enter", (2**32 - 1, 0, 0, 0, 0, 0)),
    "io_uring_register": ("io_uring_register", (2**32 - 1, 0, 0, 0)),
    "userfaultfd": ("userfaultfd", (os.O_CLOEXEC | 1,)),  # UFFD_USER_MODE_ONLY
    "perf_event_open": ("perf_event_open", (BAD, 0, 2**32 - 1, 2**32 - 1, 0)),
    "ptrace(ATTACH)": ("ptrace", (16, 999999, 0, 0)),
    "ptrace(TRACEME)": ("ptrace", (0, 0, 0, 0)),
    "process_vm_readv": ("process_vm_readv", (999999, 0, 0, 0, 0, 0)),
    "kexec_load": ("kexec_load", (0, 0, 0, 0)),
    "init_module": ("init_module", (BAD, 0, BAD)),
    "finit_module": ("finit_module", (2**32 - 1, BAD, 0)),
}

PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for label, (nr, args) in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    out[label] = ctypes.get_errno() if ret == -1 else "ok"
print(json.dumps(out))
"""


async def test_each_dangerous_syscall_is_refused(sandbox: LocalSandbox) -> None:
    calls = {label: (NR[name], args) for label, (name, args) in PROBES.items()}
    result = await sandbox.exec(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(calls))}")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    refused = {label: code for label, code in got.items() if code == errno.EPERM}
    assert refused == {label: errno.EPERM for label in PROBES}, {
        label: (errno.errorcode.get(code, code) if isinstance(code, int) else code)
        for label, code in got.items()
        if code != errno.EPERM
    }


async def test_clone3_says_enosys_so_libc_falls_back_to_filtered_clone(
    sandbox: LocalSandbox,
) -> None:
    calls = {"clone3": (NR["clone3"], (0, 0))}  # unfiltered: EINVAL (a size of 0)
    result = await sandbox.exec(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(calls))}")
    assert json.loads(result.output) == {"clone3": errno.ENOSYS}, result.output
    # Processes and threads are still made as usual (fork, posix_spawn, pthreads).
    ok = await sandbox.exec(
        "python3 -c 'import subprocess, threading; t = threading.Thread(target=print, "
        'args=("thread",)); t.start(); t.join(); subprocess.run(["echo", "child"])\'; '
        "(echo subshell) ; echo bg & wait; grep Seccomp: /proc/self/status"
    )
    assert sorted(ok.output.split("\n")[:4]) == ["bg", "child", "subshell", "thread"], ok.output
    assert "Seccomp:\t2" in ok.output


async def test_no_nested_user_namespace_not_even_through_util_linux(sandbox: LocalSandbox) -> None:
    result = await sandbox.exec(
        "unshare -U -r id -u 2>&1; echo rc=$?; unshare -n -r ip link 2>&1; echo rc=$?; "
        "cat /proc/sys/user/max_user_namespaces"
    )
    assert "rc=0" not in result.output, result.output
    assert "Operation not permitted" in result.output


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="int 0x80 is x86")
async def test_32_bit_syscalls_are_filtered_too(sandbox: LocalSandbox) -> None:
    """unshare(CLONE_NEWUSER) through the i386 entry point (int 0x80), from machine code."""
    code = bytes.fromhex("53" "b836010000" "bb00000010" "cd80" "5b" "c3")  # fmt: skip
    script = (
        "import ctypes, mmap; m = mmap.mmap(-1, 4096, prot=7); m.write(bytes.fromhex('"
        + code.hex()
        + "')); f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m))); "
        "print(f())"
    )
    result = await sandbox.exec(f'python3 -c "{script}"')
    assert result.output == f"{-errno.EPERM}\n", result.output


# --- item 10: what PID 1 shows, and the unsandboxed mode's leftovers -------------------------
async def test_pid_1_shows_no_host_path_nor_run_id(sandbox: LocalSandbox) -> None:
    result = await sandbox.exec("cat /proc/1/cmdline /proc/1/environ | tr '\\0' '\\n'")
    run_id = sandbox.base.name
    for leaked in (str(sandbox.base), str(sandbox.provider.root), run_id, tempfile.gettempdir()):
        assert leaked not in result.output, (leaked, result.output)
    assert result.output.startswith("bwrap\n"), result.output
    # Nor the server's own working directory or PATH (bubblewrap inherits its environment).
    environ = dict(line.split("=", 1) for line in result.output.splitlines()[1:] if "=" in line)
    assert environ.get("PWD", "/") == "/", environ
    assert environ.get("PATH") == SANDBOX_PATH, environ
    assert os.getcwd() not in result.output, result.output


async def test_the_sweep_still_kills_a_sandbox_s_processes(
    provider: LocalSandboxProvider,
) -> None:
    """With the bind paths out of bwrap's command line, orphan sweeps still find the sandbox."""
    import asyncio

    orphan = await provider.create(f"orphan-{uuid.uuid4().hex[:8]}")
    mark = str(uuid.uuid4().int % 10**9).rjust(9, "1")
    task = asyncio.create_task(orphan.exec(f"sleep 99.{mark}", timeout=60))
    try:
        for _ in range(250):
            if processes_running(f"99.{mark}"):
                break
            await asyncio.sleep(0.02)
        assert processes_running(f"99.{mark}")
        assert await provider.cleanup_orphans(set()) == 1
        with contextlib.suppress(SandboxLost):  # the command died and its directory went
            result = await asyncio.wait_for(task, 10)
            assert result.exit_code != 0
        assert processes_running(f"99.{mark}") == []
    finally:
        task.cancel()
        await orphan.close()


@pytest.mark.e2e  # it starts the real server or the CLI
async def test_unsandboxed_mode_leaves_no_bundle_behind(tmp_path: Path) -> None:
    """BACKSPACE_ALLOW_UNSANDBOXED=true without bubblewrap: a whole run, then nothing in /tmp."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for entry in Path(directory).iterdir():
            if entry.name != "bwrap" and not (tools / entry.name).exists():
                (tools / entry.name).symlink_to(entry)
    repos = tmp_path / "repos"
    make_repo(repos, "widgets")
    before = set(Path(tempfile.gettempdir()).glob("backspace-*.bundle")) | set(
        Path(tempfile.gettempdir()).glob("backspace-*.tar")
    )
    from tests.server import start_server

    with FakeAnthropic(scenarios={}) as fake:
        fake.scenarios["unsandboxed"] = [Reply([Text("Editing."), EDIT_SIGNUP]), finish()]
        server = start_server(
            tmp_path / "server",
            {
                "PATH": str(tools),
                "ANTHROPIC_API_KEY": "sk-ant-api03-test-key-0123456789",
                "ANTHROPIC_BASE_URL": fake.url,
                "BACKSPACE_LOCAL_REPOS": str(repos),
                "BACKSPACE_ALLOW_UNSANDBOXED": "true",
            },
        )
        try:
            events = await post_run(
                server.url, {"repo_url": "local:widgets", "prompt": "unsandboxed"}
            )
        finally:
            server.stop()
    assert events[-1]["type"] == "complete" and events[-1]["status"] == "succeeded", events[-1]
    run_id = events[0]["run_id"]
    left = (
        set(Path(tempfile.gettempdir()).glob("backspace-*.bundle"))
        | set(Path(tempfile.gettempdir()).glob("backspace-*.tar"))
    ) - before
    assert [p for p in left if run_id[:8] in p.name] == []
