"""The egress proxy on its own: real sockets, a real loopback registry, attacks from a client.

The sandbox's side of a door is a Unix socket; these tests speak HTTP proxy on it directly. A
loopback HTTP server stands for a registry, reached by name through the AddressMap; names the
proxy must resolve go through an injected resolver (a coroutine, not a patch) so that a name can
resolve to a private or metadata address on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import socket
import socketserver
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from backspace.orchestrator.egress.addresses import refusal
from backspace.orchestrator.egress.gate import Gate, Phase
from backspace.orchestrator.egress.hosts import AddressMap, HostList
from backspace.orchestrator.egress.proxy import Door, EgressProxy, parse_head

FAKE_DNS = {
    "internal.test": ["10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "rebind.test": ["93.184.215.14", "127.0.0.1"],
    "mapped.test": ["::ffff:10.0.0.5"],
    "cgnat.test": ["100.64.0.1"],
    "good.test": ["93.184.215.14"],
}
LOOKUPS: list[str] = []


async def fake_resolver(host: str, port: int) -> Sequence[str]:
    LOOKUPS.append(host)
    if host not in FAKE_DNS:
        raise OSError(f"{host}: no such name")
    return FAKE_DNS[host]


class Registry(http.server.BaseHTTPRequestHandler):
    """Answers with the request head it received, so a test sees what the proxy forwarded."""

    def do_GET(self) -> None:
        head = f"{self.requestline}\r\n{self.headers}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(head)))
        self.end_headers()
        self.wfile.write(head)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Banner(socketserver.BaseRequestHandler):
    """Speaks first, as SSH and SMTP servers do."""

    def handle(self) -> None:
        self.request.sendall(b"220 banner.test ready\r\n")
        self.request.recv(100)


class Servers(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


@pytest.fixture(scope="module")
def registry() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    server = Servers(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def banner() -> Iterator[int]:
    server = Servers(("127.0.0.1", 0), Banner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module", params=[True, False], ids=["splice", "protocols"])
def proxy(
    registry: int, echo: int, banner: int, request: pytest.FixtureRequest
) -> Iterator[EgressProxy]:
    """Each test runs with tunnels moved by splice(2) and by the Protocols (the fallback)."""
    addresses = AddressMap.parse(
        f"pypi.test=127.0.0.1:{registry},echo.test=127.0.0.1:{echo},banner.test=127.0.0.1:{banner}"
    )
    proxy = EgressProxy(
        addresses,
        resolver=fake_resolver,
        head_timeout=1.0,
        max_head_bytes=4096,
        splice=request.param,
    )
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="backspace-egress-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


ALLOWED = HostList.parse(
    ["pypi.test", "echo.test", "banner.test", *FAKE_DNS, "localhost", "foo.localhost"]
)


@pytest.fixture
def door(proxy: EgressProxy, socket_dir: Path) -> Iterator[tuple[Door, Gate]]:
    gate = Gate()
    gate.enter(Phase.SETUP, ALLOWED)
    door = proxy.open(socket_dir / f"door-{time.monotonic_ns()}.sock", gate)
    yield door, gate
    door.close()


def connect(door: Door) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(str(door.path))
    return client


def read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def request(door: Door, head: str) -> bytes:
    with connect(door) as client:
        client.sendall(head.encode())
        return read_all(client)


def read_head(client: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(1)
        if not chunk:
            break
        data += chunk
    return data


# --- what works -------------------------------------------------------------------------------
def test_connect_tunnels_bytes_both_ways(door: tuple[Door, Gate]) -> None:
    with connect(door[0]) as client:
        client.sendall(b"CONNECT pypi.test:443 HTTP/1.1\r\nHost: pypi.test:443\r\n\r\n")
        assert read_head(client).startswith(b"HTTP/1.1 200 ")
        client.sendall(b"GET /simple/ HTTP/1.1\r\nHost: pypi.test\r\nConnection: close\r\n\r\n")
        answer = read_all(client)
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert b"GET /simple/ HTTP/1.1" in answer
    assert door[1].blocked == []


def test_plain_http_is_forwarded_in_origin_form_without_proxy_headers(
    door: tuple[Door, Gate],
) -> None:
    answer = request(
        door[0],
        "GET http://PyPI.test/simple/x?y=1 HTTP/1.1\r\nHost: elsewhere\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
        "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n",
    )
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.0 200 ")
    assert body.startswith(b"GET /simple/x?y=1 HTTP/1.1\r\n")
    lowered = body.lower()
    assert b"host: pypi.test\n" in lowered
    assert b"connection: close" in lowered
    assert b"accept: */*" in lowered
    for gone in (b"proxy-", b"c2vjcmv0", b"x-drop", b"elsewhere", b"keep-alive"):
        assert gone not in lowered


def test_the_socket_is_private_to_its_owner(door: tuple[Door, Gate]) -> None:
    mode = door[0].path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert door[0].path.stat().st_uid == os.getuid()


# --- refusals ---------------------------------------------------------------------------------
def test_a_name_outside_the_list_is_refused_with_a_hint(
    proxy: EgressProxy, socket_dir: Path
) -> None:
    gate = Gate()
    gate.enter(Phase.AGENT, HostList.parse(["pypi.test"]))
    door = proxy.open(socket_dir / "narrow.sock", gate)
    try:
        answer = request(door, "CONNECT evil.example:443 HTTP/1.1\r\n\r\n")
    finally:
        door.close()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"add `evil.example` to [network] agent in .backspace.toml" in answer
    [blocked] = gate.blocked
    assert (blocked.host, blocked.port, blocked.phase) == ("evil.example", 443, Phase.AGENT)


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:80",
        "localhost:80",
        "localhost.:80",
        "LOCALHOST:443",
        "foo.localhost:443",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "169.254.169.254:80",
        "2130706433:80",
        "0x7f.1:80",
        "0177.0.0.1:80",
        "127.1:80",
        "internal.test:443",
        "metadata.test:80",
        "rebind.test:443",
        "mapped.test:443",
        "cgnat.test:443",
        "good.test:22",
    ],
)
def test_addresses_and_names_of_inside_addresses_are_refused(
    door: tuple[Door, Gate], target: str
) -> None:
    for head in (f"CONNECT {target} HTTP/1.1\r\n\r\n", f"GET http://{target}/ HTTP/1.1\r\n\r\n"):
        answer = request(door[0], head)
        assert answer.startswith(b"HTTP/1.1 403 "), (head, answer)
    assert len(door[1].blocked) == 1  # the same attempt twice is reported once
    for attempt in door[1].blocked:  # stopped as an address, not merely as an unlisted name
        assert "allowlist" not in attempt.reason
        assert any(word in attempt.reason for word in ("address", "this machine", "port"))


def test_a_name_is_resolved_once_and_its_vetted_address_is_the_one_connected() -> None:
    proxy = EgressProxy(AddressMap({}), resolver=fake_resolver)
    gate = Gate()
    gate.enter(Phase.SETUP, ALLOWED)
    LOOKUPS.clear()
    assert asyncio.run(proxy.admit("good.test", 443, gate)) == ("93.184.215.14", 443)
    assert LOOKUPS == ["good.test"]


@pytest.mark.parametrize(
    ("address", "bad"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),
        ("169.254.169.254", True),
        ("224.0.0.1", True),
        ("0.0.0.0", True),  # noqa: S104 - an address vetted, not bound
        ("240.0.0.1", True),
        ("::", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("fec0::1", True),
        ("fd00::1", True),
        ("ff02::1", True),
        ("::ffff:169.254.169.254", True),
        ("64:ff9b::a00:5", True),
    ],
)
def test_address_vetting(address: str, bad: bool) -> None:
    assert (refusal(address) is not None) == bad


@pytest.mark.parametrize(
    "head",
    [
        "GET /simple/ HTTP/1.1\r\nHost: pypi.test\r\n\r\n",
        "GET https://pypi.test/ HTTP/1.1\r\n\r\n",
        "CONNECT pypi.test HTTP/1.1\r\n\r\n",
        "CONNECT pypi.test:99999 HTTP/1.1\r\n\r\n",
        "GET http://user@pypi.test/ HTTP/1.1\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n",
        "GET http://pypi.test/ HTTP/2\r\n\r\n",
    ],
)
def test_anything_else_is_a_400(door: tuple[Door, Gate], head: str) -> None:
    answer = request(door[0], head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


def test_a_huge_head_gets_431(door: tuple[Door, Gate]) -> None:
    head = "GET http://pypi.test/ HTTP/1.1\r\n" + "X-Pad: " + "a" * 8000 + "\r\n\r\n"
    assert request(door[0], head).startswith(b"HTTP/1.1 431 ")
    endless = "GET http://pypi.test/ HTTP/1.1\r\n" + "X-Pad: a\r\n" * 2000
    with connect(door[0]) as client:
        client.sendall(endless.encode())
        assert read_all(client).startswith(b"HTTP/1.1 431 ")


def test_a_slow_client_is_cut_at_the_head_timeout(door: tuple[Door, Gate]) -> None:
    with connect(door[0]) as client:
        started = time.monotonic()
        client.sendall(b"GET http://pypi.test/ HTTP/1.1\r\n")
        try:
            for _ in range(40):
                client.sendall(b"X: y\r\n")
                time.sleep(0.1)
            closed = client.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        assert closed
        assert 0.9 < time.monotonic() - started < 3.5


def test_two_hundred_tunnels_at_once(door: tuple[Door, Gate]) -> None:
    clients = [connect(door[0]) for _ in range(200)]
    try:
        for client in clients:
            client.sendall(b"CONNECT echo.test:443 HTTP/1.1\r\n\r\n")
        for client in clients:
            assert read_head(client).startswith(b"HTTP/1.1 200 ")
        assert door[0].tunnels == 200
        for index, client in enumerate(clients):
            client.sendall(f"ping {index}".encode())
        for index, client in enumerate(clients):
            assert client.recv(100) == f"ping {index}".encode()
    finally:
        for client in clients:
            client.close()


def test_past_the_limit_of_a_door_a_connection_gets_503(registry: int, socket_dir: Path) -> None:
    proxy = EgressProxy(AddressMap.parse(f"pypi.test=127.0.0.1:{registry}"), max_tunnels_per_door=2)
    gate = Gate()
    gate.enter(Phase.SETUP, ALLOWED)
    door = proxy.open(socket_dir / "small.sock", gate)
    try:
        held = [connect(door) for _ in range(2)]
        for client in held:
            client.sendall(b"CONNECT pypi.test:443 HTTP/1.1\r\n\r\n")
            assert read_head(client).startswith(b"HTTP/1.1 200 ")
        assert request(door, "CONNECT pypi.test:443 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        for client in held:
            client.close()
    finally:
        proxy.stop()


def test_closing_the_door_closes_its_tunnels(proxy: EgressProxy, socket_dir: Path) -> None:
    gate = Gate()
    gate.enter(Phase.SETUP, ALLOWED)
    door = proxy.open(socket_dir / "closing.sock", gate)
    with connect(door) as client:
        client.sendall(b"CONNECT echo.test:443 HTTP/1.1\r\n\r\n")
        assert read_head(client).startswith(b"HTTP/1.1 200 ")
        door.close()
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(10) == b""
    assert not door.path.exists()
    with pytest.raises(OSError):
        connect(door)


def test_parse_head_keeps_a_port_and_brackets() -> None:
    assert parse_head(b"CONNECT Files.Test.:8443 HTTP/1.1\r\n\r\n") == ("files.test", 8443, None)
    parsed = parse_head(b"GET http://a.test:8080 HTTP/1.0\r\n\r\n")
    assert not isinstance(parsed, type(None))
    assert parsed[:2] == ("a.test", 8080)  # type: ignore[index]


def test_a_loop_of_refused_attempts_cannot_flood_the_run_with_reports(
    proxy: EgressProxy, socket_dir: Path
) -> None:
    gate = Gate()
    gate.enter(Phase.AGENT, HostList())
    door = proxy.open(socket_dir / "flood.sock", gate)
    try:
        gate.running("while true; do curl http://pypi.test/; done")
        for _ in range(300):  # the same attempt again and again: reported once
            assert request(door, "GET http://pypi.test/ HTTP/1.1\r\n\r\n").startswith(
                b"HTTP/1.1 403 "
            )
        assert len(gate.blocked) == 1
        gate.running("for i in $(seq 1000); do curl http://n$i.example/; done")
        for index in range(300):  # ever new names: reported up to the door's cap
            answer = request(door, f"CONNECT n{index}.example:443 HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 403 ")
        assert len(gate.blocked) == proxy.max_reports_per_door
    finally:
        door.close()


def test_a_large_transfer_arrives_whole_both_ways(door: tuple[Door, Gate]) -> None:
    """8 MiB through an echo tunnel while the reader lags: flow control, nothing lost or reordered."""
    payload = os.urandom(8 * 1024 * 1024)
    with connect(door[0]) as client:
        client.settimeout(30)
        client.sendall(b"CONNECT echo.test:443 HTTP/1.1\r\n\r\n")
        assert read_head(client).startswith(b"HTTP/1.1 200 ")
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            if len(received) < 1024 * 1024:
                time.sleep(0.001)  # a slow start: the buffers fill and reading pauses
            chunk = client.recv(1024 * 1024)
            assert chunk, f"closed after {len(received)} bytes"
            received += chunk
        sender.join()
        client.shutdown(socket.SHUT_WR)
        assert client.recv(10) == b""  # the half-close went through, and the tunnel ended
    assert bytes(received) == payload


def test_what_a_server_says_first_arrives_after_the_200(door: tuple[Door, Gate]) -> None:
    with connect(door[0]) as client:
        client.sendall(b"CONNECT banner.test:443 HTTP/1.1\r\n\r\n")
        time.sleep(0.3)  # the banner is sent while the proxy answers the CONNECT
        assert read_head(client).startswith(b"HTTP/1.1 200 ")
        assert client.recv(100) == b"220 banner.test ready\r\n"
