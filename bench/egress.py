"""The egress proxy's cost: a large download through it, and the memory of many open tunnels.

    uv run python -m bench.egress [--mb 100] [--rounds 5] [--tunnels 200]

(a) One client downloads `--mb` MB from a loopback file server directly (TCP), then through the
proxy's door (a Unix socket) as a CONNECT tunnel and as a plain absolute-form GET; best of
`--rounds` each; target: through the proxy <= 1.2x the direct time. The proxy moves a tunnel's
bytes with splice(2); a row shows the same proxy with its Protocols pump instead. A last row goes the whole
way a sandboxed command's bytes go: TCP to socat (as the sandbox runs it, see local.py), then
the door. For reference, a relay that is as cheap as a relay gets (splice(2) through a pipe, no
decision, one thread per direction) stands where the proxy stands: what it costs is the cost of
one more hop on this machine, not of the proxy. (b) `--tunnels` tunnels
open at once through one door, a message echoed on each: the RSS of a process running only the
proxy, above its idle RSS; target <= 20 MB. The file server and the proxy each run in a process
of their own, as in production (the server's loop never carries the bytes), so the client's
Python does not share a GIL with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import print_table

CHUNK = 1024 * 1024
NAME = "files.bench"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ but not on every platform


# --- the file server (its own process) ----------------------------------------------------------
async def _serve_files(size: int) -> None:
    blob = memoryview(os.urandom(CHUNK))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /echo"):
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                return
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            left = size
            while left:
                part = blob[: min(CHUNK, left)]
                writer.write(part)
                left -= len(part)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# --- the proxy (its own process) ----------------------------------------------------------------
def _serve_proxy(port: int, path: Path, splice: bool) -> None:
    from backspace.orchestrator.egress.gate import Gate, Phase
    from backspace.orchestrator.egress.hosts import AddressMap, HostList
    from backspace.orchestrator.egress.proxy import EgressProxy

    proxy = EgressProxy(
        AddressMap.parse(f"{NAME}=127.0.0.1:{port}"), max_tunnels_per_door=1024, splice=splice
    )
    gate = Gate()
    gate.enter(Phase.SETUP, HostList.parse([NAME]))
    door = proxy.open(path, gate)
    print("ready", flush=True)
    sys.stdin.read()
    door.close()
    proxy.stop()


# --- the reference relay (its own process) -----------------------------------------------------
def _serve_splice(port: int, path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    print("ready", flush=True)
    threading.Thread(target=sys.stdin.read, daemon=True).start()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        read, write = os.pipe()
        fcntl.fcntl(write, F_SETPIPE_SZ, CHUNK)
        with contextlib.suppress(OSError):
            while moved := os.splice(source.fileno(), write, CHUNK):
                while moved:
                    moved -= os.splice(read, sink.fileno(), moved)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        os.close(read)
        os.close(write)

    def serve(client: socket.socket) -> None:
        _read_head(client)
        upstream = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        back = threading.Thread(target=pump, args=(upstream, client))
        back.start()
        pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


# --- the client (this process) ------------------------------------------------------------------
def _download(sock: socket.socket, prelude: bytes, request: bytes, size: int) -> float:
    """Seconds to read the whole response (head and `size` bytes of body)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    if prelude:
        sock.sendall(prelude)
        _read_head(sock)
    sock.sendall(request)
    head = _read_head(sock)
    body = 0
    while body < size:
        got = sock.recv_into(view)
        if not got:
            raise RuntimeError(f"the download stopped at {body} of {size} bytes ({head[:40]!r})")
        body += got
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            raise RuntimeError(f"closed before the end of a head: {data!r}")
        data += chunk
    return data


def _unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.egress", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _curl(out: Path, url: str, *proxy: str) -> float:
    """A download as a sandboxed command makes it: curl writing the file to disk."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", str(out), *proxy, url], check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--serve-files", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-splice", nargs=2, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve_files is not None:
        asyncio.run(_serve_files(options.serve_files))
        return {}
    if options.serve_splice is not None:
        _serve_splice(int(options.serve_splice[0]), Path(options.serve_splice[1]))
        return {}
    if options.serve_proxy is not None:
        port_text, path, splice = options.serve_proxy
        _serve_proxy(int(port_text), Path(path), splice == "splice")
        return {}

    size = options.mb * 1024 * 1024
    files = _spawn("--serve-files", str(size))
    assert files.stdout is not None
    port = int(files.stdout.readline())
    with tempfile.TemporaryDirectory(prefix="bench-egress-") as tmp:
        door = Path(tmp) / "door.sock"
        proxy = _spawn("--serve-proxy", str(port), str(door), "splice")
        assert proxy.stdout is not None
        assert proxy.stdout.readline().strip() == "ready"
        try:
            download = (f"GET /big HTTP/1.1\r\nHost: {NAME}\r\n\r\n").encode()
            absolute = (f"GET http://{NAME}/big HTTP/1.1\r\nHost: {NAME}\r\n\r\n").encode()
            connect = f"CONNECT {NAME}:443 HTTP/1.1\r\n\r\n".encode()
            relay_port = _free_port()
            listen = f"TCP-LISTEN:{relay_port},bind=127.0.0.1,fork,reuseaddr"
            relay = subprocess.Popen(["socat", "-b", "262144", listen, f"UNIX-CONNECT:{door}"])
            _wait_listening(relay_port)
            plain_door = Path(tmp) / "protocols.sock"
            protocols = _spawn("--serve-proxy", str(port), str(plain_door), "protocols")
            assert protocols.stdout is not None
            assert protocols.stdout.readline().strip() == "ready"
            spliced = Path(tmp) / "splice.sock"
            reference = _spawn("--serve-splice", str(port), str(spliced))
            assert reference.stdout is not None
            assert reference.stdout.readline().strip() == "ready"
            times: dict[str, list[float]] = {
                "direct": [],
                "CONNECT tunnel": [],
                "plain HTTP": [],
                "CONNECT tunnel, Protocols only (splice off)": [],
                "CONNECT via socat, as in a sandbox": [],
                "reference: CONNECT to a splice(2) relay": [],
            }
            for _ in range(options.rounds):
                times["direct"].append(
                    _download(socket.create_connection(("127.0.0.1", port)), b"", download, size)
                )
                times["CONNECT tunnel"].append(_download(_unix(door), connect, download, size))
                times["plain HTTP"].append(_download(_unix(door), b"", absolute, size))
                times["CONNECT tunnel, Protocols only (splice off)"].append(
                    _download(_unix(plain_door), connect, download, size)
                )
                via = socket.create_connection(("127.0.0.1", relay_port))
                times["CONNECT via socat, as in a sandbox"].append(
                    _download(via, connect, download, size)
                )
                times["reference: CONNECT to a splice(2) relay"].append(
                    _download(_unix(spliced), connect, download, size)
                )
            # The same download as a command in the sandbox makes it: curl writing to disk,
            # directly, and through socat and the door (plain HTTP, and a CONNECT tunnel).
            out = Path(tmp) / "download"
            relayed = ("-x", f"http://127.0.0.1:{relay_port}")
            curls: dict[str, list[float]] = {
                "curl -o FILE, direct": [],
                "curl -o FILE, socat + door, plain HTTP": [],
                "curl -o FILE, socat + door, CONNECT tunnel": [],
            }
            for _ in range(options.rounds):
                curls["curl -o FILE, direct"].append(_curl(out, f"http://127.0.0.1:{port}/big"))
                curls["curl -o FILE, socat + door, plain HTTP"].append(
                    _curl(out, f"http://{NAME}/big", *relayed)
                )
                curls["curl -o FILE, socat + door, CONNECT tunnel"].append(
                    _curl(out, f"http://{NAME}/big", *relayed, "--proxytunnel")
                )
            relay.terminate()
            relay.wait(timeout=10)
            reference.kill()
            reference.wait(timeout=10)
            assert protocols.stdin is not None
            protocols.stdin.close()
            protocols.wait(timeout=20)
            best = {what: min(values) for what, values in times.items()}
            rows: list[tuple[str, ...]] = [
                (
                    what,
                    f"{best[what]:.3f}",
                    f"{options.mb / best[what]:.0f}",
                    f"{best[what] / best['direct']:.2f}x",
                    "" if what == "direct" else "<= 1.2x",
                )
                for what in times
            ]
            print_table(
                f"egress download ({options.mb} MB on loopback, best of {options.rounds})",
                rows,
                ("path", "seconds", "MB/s", "vs direct", "target"),
            )
            best_curl = {what: min(values) for what, values in curls.items()}
            direct_curl = best_curl["curl -o FILE, direct"]
            print_table(
                f"egress download by curl to a file ({options.mb} MB, best of {options.rounds})",
                [
                    (
                        what,
                        f"{seconds:.3f}",
                        f"{options.mb / seconds:.0f}",
                        f"{seconds / direct_curl:.2f}x",
                        "" if seconds == direct_curl else "<= 1.2x",
                    )
                    for what, seconds in best_curl.items()
                ],
                ("path", "seconds", "MB/s", "vs direct", "target"),
            )

            idle = _rss_kb(proxy.pid)
            clients = [_unix(door) for _ in range(options.tunnels)]
            for client in clients:
                client.sendall(connect)
            for client in clients:
                _read_head(client)
                client.sendall(f"GET /echo HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            for client in clients:
                _read_head(client)
                client.sendall(b"x" * 4096)
            for client in clients:
                got = 0
                while got < 4096:
                    got += len(client.recv(65536))
            time.sleep(0.5)
            busy = _rss_kb(proxy.pid)
            for client in clients:
                client.close()
            print_table(
                f"egress tunnels ({options.tunnels} open at once through one door)",
                [
                    (
                        f"{idle / 1024:.1f}",
                        f"{busy / 1024:.1f}",
                        f"{(busy - idle) / 1024:.1f}",
                        "<= 20",
                    )
                ],
                ("proxy RSS idle (MB)", "with the tunnels (MB)", "above idle (MB)", "target"),
            )
            return {
                "tunnel_ratio": best["CONNECT tunnel"] / best["direct"],
                "curl_ratio": best_curl["curl -o FILE, socat + door, CONNECT tunnel"] / direct_curl,
                "tunnels_mb": (busy - idle) / 1024,
            }
        finally:
            for process in (proxy, files):
                assert process.stdin is not None
                process.stdin.close()
                process.wait(timeout=20)


if __name__ == "__main__":
    main()
