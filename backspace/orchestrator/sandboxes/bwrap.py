"""bubblewrap's part of a sandboxed command: what the sandbox sees, and what its kernel allows.

The view is `/usr` (with the merged-usr links /bin, /lib, ...) and a short list of `/etc` files
that commands need; `/etc/passwd` and `/etc/group` are synthesised. Nothing else of the host:
not `/opt`, `/home`, `/root`, `/srv`, `/var`, nor the rest of `/etc`. `VIEW` is that list, and
`exposed()` uses it to refuse a server whose own files would lie inside it.

bubblewrap's options travel through a memfd (`--args FD`): inside the sandbox, PID 1 is bubblewrap
itself, and its /proc/1/cmdline would otherwise show the host paths of the run's directories.

A seccomp filter (Docker's default profile in spirit, built with libseccomp once per process)
refuses with EPERM what a build or a test never needs and a kernel exploit loves: new namespaces,
mounts, keyrings, bpf, io_uring, userfaultfd, perf events, ptrace, modules and kexec. clone3
gets ENOSYS (its flags cannot be filtered) so that libc falls back to clone, whose namespace
flags are filtered. ptrace is refused entirely: the PID namespace already hides every outside
process, and a tracer inside could still drive bubblewrap's own PID 1; the price is that `strace`
and `gdb` do not work in the sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from backspace.orchestrator.errors import SeccompUnavailable

# Top-level system directories: bound read-only when a directory, re-created when a symlink
# (merged /usr: /bin -> usr/bin).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# What commands need from /etc: the loader, certificates, name resolution (loopback only, but
# `localhost` must resolve), time zone, alternatives (/usr/bin/* links through them), Python's
# sitecustomize. Missing ones are skipped.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/python3",
    "/etc/python3.11",
    "/etc/python3.12",
    "/etc/python3.13",
)

VIEW = (*SYSTEM_DIRS, *ETC_FILES)

PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"  # noqa: S105 - /etc/passwd: no password
    "agent:x:{uid}:{uid}:agent:{home}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nagent:x:{uid}:\nnogroup:x:65534:\n"

# Refused with EPERM whatever their arguments.
DENIED = (
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "syslog",
    "uselib",
    "vm86",
    "vm86old",
)

CLONE_NAMESPACES = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}  # not CLONE_NEWTIME: clone() cannot make one (only unshare, refused, and clone3, ENOSYS)


@functools.cache
def seccomp_bpf() -> bytes:
    """The filter as BPF for `bwrap --seccomp`, compiled once per process."""
    try:
        import pyseccomp as seccomp
    except (ImportError, RuntimeError) as exc:
        raise SeccompUnavailable(
            f"libseccomp cannot be loaded ({exc}): install the Debian package libseccomp2"
        ) from exc
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    if seccomp.system_arch() == seccomp.Arch.X86_64:
        rules.add_arch(seccomp.Arch.X86)  # 32-bit syscalls (int 0x80) are filtered too
    for name in DENIED:
        with contextlib.suppress(OSError):  # not a syscall of these architectures
            rules.add_rule(deny, name)
    for flag in CLONE_NAMESPACES.values():
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("seccomp")
    try:
        with os.fdopen(fd, "w+b", closefd=False) as out:
            rules.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd)
    finally:
        os.close(fd)


def exposed(paths: Mapping[str, Path]) -> list[str]:
    """Which of these named host paths every sandboxed command could read, and through what."""
    seen = [(entry, Path(entry).resolve()) for entry in VIEW if Path(entry).exists()]
    found = []
    for label, path in paths.items():
        real = path.resolve()
        for entry, shown in seen:
            if real == shown or shown in real.parents:
                found.append(f"{label} {path} lies inside {entry}")
                break
    return found


@contextlib.contextmanager
def bwrap_argv(
    binds: Mapping[str, Path],
    *,
    cwd: str,
    env: Mapping[str, str],
    uid: int,
    home: str,
    shm_bytes: int | None = None,
    read_only: Mapping[str, Path] | None = None,
) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """`bwrap --args N` and the descriptors it reads: the options, passwd, group, the filter.

    `binds` maps sandbox paths to the host directories bound writable there. The descriptors
    are closed when the block ends: start the process inside it. `shm_bytes` sizes /dev/shm
    (bubblewrap 0.5 or newer); without it /dev/shm is part of /dev's tmpfs. `read_only` maps
    sandbox paths to host directories bound read-only (tools such as Claude Code).
    """
    fds: list[int] = []
    try:
        passwd = _memfd("passwd", PASSWD.format(uid=uid, home=home).encode(), fds)
        group = _memfd("group", GROUP.format(uid=uid).encode(), fds)
        bpf = _memfd("seccomp", seccomp_bpf(), fds)
        options = ["--unshare-all", "--unshare-user", "--disable-userns"]
        options += ["--die-with-parent", "--new-session", "--seccomp", str(bpf)]
        options += ["--uid", str(uid), "--gid", str(uid), "--hostname", "sandbox"]
        for directory in SYSTEM_DIRS:
            path = Path(directory)
            if path.is_symlink():
                options += ["--symlink", os.readlink(path), directory]
            elif path.is_dir():
                options += ["--ro-bind", directory, directory]
        for entry in ETC_FILES:
            options += ["--ro-bind-try", entry, entry]
        options += ["--ro-bind-data", str(passwd), "/etc/passwd"]
        options += ["--ro-bind-data", str(group), "/etc/group"]
        options += ["--proc", "/proc", "--dev", "/dev"]
        if shm_bytes is not None:
            options += ["--size", str(shm_bytes), "--tmpfs", "/dev/shm"]  # noqa: S108 - its own
        for inside, host in binds.items():
            options += ["--bind", str(host), inside]
        for inside, host in (read_only or {}).items():
            options += ["--ro-bind", str(host), inside]
        options += ["--remount-ro", "/", "--chdir", cwd, "--clearenv"]
        for key, value in env.items():
            options += ["--setenv", key, value]
        args = _memfd("args", b"".join(o.encode() + b"\0" for o in options), fds)
        yield ["bwrap", "--args", str(args)], tuple(fds)
    finally:
        for fd in fds:
            os.close(fd)


def _memfd(name: str, data: bytes, fds: list[int]) -> int:
    fd = os.memfd_create(name, 0)  # not close-on-exec: bubblewrap reads it
    fds.append(fd)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
