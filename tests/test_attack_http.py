"""Attacks through browsers and connections, against the real server (issue 12: items 2, 8, 10).

A web page the operator visits can send requests to the local API: a cross-site "simple" POST
(text/plain, no preflight), or a DNS-rebound name whose Host header is the attacker's. Slow
clients (idle, half a request line, half a body) and many idle connections must not take the
server down. The pull request page carries the strict CSP; /health names no file path to a
caller without the API key.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import collect, events_of
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
EVIL = "http://evil.example"
ANY = "0.0.0.0"  # noqa: S104  (a name in a Host header; nothing listens on it here)
API_KEY = "attack-http-test-key-0123456789abcdef"


@dataclass
class Api:
    server: Server
    model: FakeAnthropic

    @property
    def port(self) -> int:
        return int(self.server.url.rsplit(":", 1)[1])

    def runs(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.server.url}/api/runs", timeout=10, verify=TLS)
        assert response.status_code == 200, response.text
        runs: list[dict[str, Any]] = response.json()["runs"]
        return runs


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The defaults (HOST=127.0.0.1, no auth), a local repository and the fake model."""
    base = tmp_path_factory.mktemp("attack-http")
    repos = base / "repos"
    make_repo(repos, "widgets")
    scenarios: dict[str, Any] = {
        "pr-page": [
            Reply([Text("Let me look."), ToolCall("bash", {"command": "cat app.py"})]),
            Reply([EDIT_SIGNUP]),
            finish(),
        ]
    }
    with FakeAnthropic(scenarios=scenarios, default="pr-page") as model:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-api03-attack-http-0123456789",
            "ANTHROPIC_BASE_URL": model.url,
            "BACKSPACE_LOCAL_REPOS": str(repos),
        }
        server = start_server(base / "server", env)
        try:
            yield Api(server, model)
        finally:
            server.stop()


def _no_server_error(server: Server) -> None:
    assert server.process.poll() is None
    log = server.logs()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-3000:]


# --- 2. a web page drives the local API ---------------------------------------------------------
@dataclass
class CrossSite:
    name: str
    path: str
    headers: dict[str, str]
    content_type: str | None
    status: int
    says: str


BODY = json.dumps({"repo_url": "local:widgets", "prompt": "csrf: delete everything"}).encode()
CROSS_SITE: list[CrossSite] = [
    CrossSite("text/plain from another site (no preflight)", "/api/code",
              {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
              "text/plain", 403, "Origin"),
    CrossSite("text/plain with only an Origin (an older browser)", "/api/code",
              {"Origin": EVIL}, "text/plain;charset=UTF-8", 403, "Origin"),
    CrossSite("text/plain with only Sec-Fetch-Site", "/api/code",
              {"Sec-Fetch-Site": "cross-site"}, "text/plain", 403, "Sec-Fetch-Site"),
    CrossSite("form-encoded from another site", "/api/code",
              {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
              "application/x-www-form-urlencoded", 403, "Origin"),
    CrossSite("JSON from another site (a preflight would be skipped by no-cors)", "/api/code",
              {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, "application/json", 403, "Origin"),
    CrossSite("from another port of the same machine (same-site)", "/api/code",
              {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},
              "application/json", 403, "Origin"),
    CrossSite("from a sandboxed frame (Origin: null)", "/api/code", {"Origin": "null"},
              "text/plain", 403, "Origin"),
    CrossSite("text/plain without any browser header", "/api/code", {}, "text/plain", 415,
              "application/json"),
    CrossSite("no Content-Type at all", "/api/code", {}, None, 415, "application/json"),
    CrossSite("multipart from a form", "/api/code", {}, "multipart/form-data; boundary=x", 415,
              "application/json"),
    CrossSite("cancel from another site", "/api/runs/anything/cancel",
              {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, "text/plain", 403, "Origin"),
]  # fmt: skip


@pytest.mark.parametrize("case", CROSS_SITE, ids=[c.name for c in CROSS_SITE])
def test_a_cross_site_or_non_json_post_starts_no_run(api: Api, case: CrossSite) -> None:
    before = len(api.runs())
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    response = httpx.post(
        f"{api.server.url}{case.path}", content=BODY, headers=headers, timeout=10, verify=TLS
    )
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    assert case.says in response.json()["detail"], response.json()
    assert len(api.runs()) == before
    _no_server_error(api.server)


REBOUND = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil"]


@pytest.mark.parametrize("host", REBOUND)
@pytest.mark.parametrize(
    "path", ["/api/runs", "/api/runs/{run}", "/api/runs/{run}/events", "/health", "/"]
)
async def test_a_dns_rebound_host_reads_nothing(api: Api, host: str, path: str) -> None:
    run = await _a_run(api)
    url = api.server.url + path.format(run=run["id"])
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        response = await client.get(url, headers={"Host": host.format(port=api.port)})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert "BACKSPACE_ALLOWED_HOSTS" in detail and "Host" in detail
    assert run["id"] not in response.text and "csrf" not in response.text


_RUN: list[dict[str, Any]] = []


async def _a_run(api: Api) -> dict[str, Any]:
    """One run this module started the honest way (same-origin JSON), which it then finds."""
    if not _RUN:
        async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
            response = await client.post(
                f"{api.server.url}/api/code",
                json={"repo_url": "local:widgets", "prompt": "pr-page: validate the signup name"},
                headers={"Accept": "application/json"},
            )
        assert response.status_code == 202, response.text
        _RUN.append(response.json())
    return _RUN[0]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, the CLI: no browser headers
        {"Origin": "{url}", "Sec-Fetch-Site": "same-origin"},  # the web page's own fetch
        {"Host": "localhost:{port}", "Origin": "http://localhost:{port}"},
        {"Host": "[::1]:{port}", "Origin": "http://[::1]:{port}"},
        {"Host": "127.0.0.1", "Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Content-Type": "application/json; charset=utf-8"},
    ],
    ids=["no browser headers", "same origin", "localhost", "[::1]", "address bar", "charset"],
)
async def test_the_web_page_and_plain_clients_still_start_runs(
    api: Api, headers: dict[str, str]
) -> None:
    sent = {k: v.format(url=api.server.url, port=api.port) for k, v in headers.items()}
    sent.setdefault("Content-Type", "application/json")
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response = await client.post(
            f"{api.server.url}/api/code",
            content=json.dumps({"repo_url": "local:widgets", "prompt": "pr-page: honest"}),
            headers={"Accept": "application/json", **sent},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        read = await client.get(f"{api.server.url}/api/runs/{run_id}", headers=sent)
        assert read.status_code == 200, read.text
        page = await client.get(f"{api.server.url}/", headers=sent)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_the_public_url_and_allowed_hosts_are_answered_and_nothing_else(tmp_path: Path) -> None:
    env = {
        "BACKSPACE_PUBLIC_URL": "https://backspace.example.com",
        "BACKSPACE_ALLOWED_HOSTS": "lan-box, *.corp.example, [fd00::5]:8000",
    }
    server = start_server(tmp_path / "named", env)
    try:
        answered = {}
        for host in ["backspace.example.com", "Backspace.Example.COM:443", "lan-box:8000",
                     "ci.corp.example", "[fd00::5]", "127.0.0.1", "localhost:1", "[::1]",
                     "evil.example", "backspace.example.com.evil.example", "corp.example.evil",
                     "lan-box.evil", ANY, "[::1", ""]:  # fmt: skip
            response = httpx.get(
                f"{server.url}/api/runs", headers={"Host": host}, timeout=10, verify=TLS
            )
            answered[host] = response.status_code
        assert answered == {
            "backspace.example.com": 200,
            "Backspace.Example.COM:443": 200,
            "lan-box:8000": 200,
            "ci.corp.example": 200,
            "[fd00::5]": 200,
            "127.0.0.1": 200,
            "localhost:1": 200,
            "[::1]": 200,
            "evil.example": 400,
            "backspace.example.com.evil.example": 400,
            "corp.example.evil": 400,
            "lan-box.evil": 400,
            ANY: 400,
            "[::1": 400,
            "": 400,
        }
        # Behind a proxy that ends TLS, the page's Origin is the public URL.
        response = httpx.post(
            f"{server.url}/api/runs/nothing/cancel",
            headers={"Host": "backspace.example.com", "Origin": "https://backspace.example.com"},
            timeout=10,
            verify=TLS,
        )
        assert response.status_code == 404, response.text
    finally:
        server.stop()


def test_listening_on_every_address_takes_the_names_from_the_settings_alone() -> None:
    """HOST=0.0.0.0 is no name: BACKSPACE_PUBLIC_URL and BACKSPACE_ALLOWED_HOSTS are."""
    from backspace.app import public_url
    from backspace.config import load_settings
    from backspace.http.hosts import allowed_hosts

    settings = load_settings(
        HOST=ANY,
        BACKSPACE_PUBLIC_URL="https://backspace.example.com/",
        BACKSPACE_ALLOWED_HOSTS="lan-box:8000,*.corp.example,[fd00::5]",
    )
    assert allowed_hosts(settings, public_url(settings)) == [
        "127.0.0.1", "localhost", "[::1]", "backspace.example.com", "lan-box", "*.corp.example",
        "[fd00::5]",
    ]  # fmt: skip
    bare = load_settings(HOST=ANY)
    assert allowed_hosts(bare, public_url(bare)) == ["127.0.0.1", "localhost", "[::1]"]
    on_address = load_settings(HOST="10.1.2.3")
    assert "10.1.2.3" in allowed_hosts(on_address, public_url(on_address))


@pytest.mark.parametrize("bad", ["https://x.example", "x.example/path", "*x.example", "a.*.b"])
def test_a_bad_allowed_host_stops_start_up_with_a_clear_message(bad: str) -> None:
    from backspace.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="BACKSPACE_ALLOWED_HOSTS"):
        load_settings(BACKSPACE_ALLOWED_HOSTS=f"ok.example,{bad}")


# --- 10. the PR page's CSP, and /health's database path ------------------------------------------
async def test_the_pull_request_page_has_the_strict_csp(api: Api) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=60) as client:
        response, frames = await collect(
            client,
            "POST",
            f"{api.server.url}/api/code",
            json={"repo_url": "local:widgets", "prompt": "pr-page: add validation"},
        )
        assert response.status_code == 200
        created = [e for e in events_of(frames) if e["type"] == "pr_created"]
        assert created, events_of(frames)[-3:]
        page = await client.get(created[0]["pr_url"])
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers.get("content-security-policy") == PAGE_CSP
    assert page.headers.get("x-content-type-options") == "nosniff"
    assert page.headers.get("referrer-policy") == "same-origin"


def test_health_does_not_name_the_database_path_without_the_key(api: Api) -> None:
    response = httpx.get(f"{api.server.url}/health", timeout=10, verify=TLS)
    assert response.status_code == 200
    assert response.json()["store"]["ok"] is True
    assert "path" not in response.json()["store"]
    assert str(api.server.db_path) not in response.text and "backspace.db" not in response.text


# --- 8. slow clients ----------------------------------------------------------------------------
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
IDLE_CONNECTIONS = 2000


@contextlib.contextmanager
def soft_nofile(limit: int) -> Iterator[None]:
    """Lower this process's soft descriptor limit for what it starts (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """REQUIRE_AUTH=true, short deadlines, started with a 1,024-descriptor soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE_CONNECTIONS + 1100:
        pytest.skip(f"the hard descriptor limit ({hard}) is too low for this test")
    env = {
        "REQUIRE_AUTH": "true",
        "API_KEY": API_KEY,
        "BACKSPACE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "BACKSPACE_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    with soft_nofile(1024):
        server = start_server(tmp_path_factory.mktemp("attack-slow"), env)
    try:
        yield server
    finally:
        server.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_health_answers_with_2000_idle_connections_open(slow: Server) -> None:
    port = int(slow.url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            idle.extend(pool.map(lambda _: _connect(port), range(IDLE_CONNECTIONS)))
        opened = time.monotonic() - started
        response = httpx.get(f"{slow.url}/health", timeout=HEADER_TIMEOUT, verify=TLS)
        assert response.status_code == 200, response.text
        # The idle connections were all still open (none reached its header deadline yet).
        assert time.monotonic() - started < HEADER_TIMEOUT, opened
    finally:
        for sock in idle:
            sock.close()
    _no_server_error(slow)


def _closed_after(sock: socket.socket, limit: float, said: list[bytes]) -> float | None:
    """Seconds until the server closes `sock` (None if still open after `limit`); what it said
    before goes in `said`."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while True:
            data = sock.recv(4096)
            said.append(data)
            if not data:
                return time.monotonic() - started
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - started


def _slowloris(port: int) -> float | None:
    """A header line every half second, never the end of the headers."""
    sock = _connect(port)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    sock.settimeout(0.5)
    try:
        for n in range(int((HEADER_TIMEOUT + 4) / 0.5)):
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                sock.sendall(f"X-{n}: {n}\r\n".encode())
        return None
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - started
    finally:
        sock.close()


SAID: dict[bytes, bytes] = {}


def _stalled(port: int, first: bytes) -> float | None:
    sock = _connect(port)
    said: list[bytes] = []
    try:
        if first:
            sock.sendall(first)
        return _closed_after(sock, HEADER_TIMEOUT + BODY_TIMEOUT + 4, said)
    finally:
        SAID[first] = b"".join(said)
        sock.close()


def test_slow_clients_are_cut_off_at_their_deadlines(slow: Server) -> None:
    port = int(slow.url.rsplit(":", 1)[1])
    half_body = (
        b"POST /api/code HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b'\r\nContent-Length: 200\r\n\r\n{"repo'
    )
    shapes = {
        "connects and says nothing": lambda: _stalled(port, b""),
        "half a request line": lambda: _stalled(port, b"GET /hea"),
        "a request line, no headers' end": lambda: _stalled(port, b"GET /health HTTP/1.1\r\n"),
        "a header every half second": lambda: _slowloris(port),
        "half a body": lambda: _stalled(port, half_body),
    }
    with ThreadPoolExecutor(len(shapes)) as pool:
        futures = {name: pool.submit(shape) for name, shape in shapes.items()}
        closed = {name: future.result() for name, future in futures.items()}
    for name, after in closed.items():
        assert after is not None, f"{name}: still open after {HEADER_TIMEOUT + 4} s ({closed})"
        assert after < HEADER_TIMEOUT + BODY_TIMEOUT + 1.5, (name, closed)
    # A client that began a request is told why (408, naming the setting); a silent one is not.
    assert SAID[b""] == b""
    for began in (b"GET /hea", b"GET /health HTTP/1.1\r\n"):
        assert SAID[began].startswith(b"HTTP/1.1 408 "), SAID[began]
        assert b"BACKSPACE_HEADER_TIMEOUT" in SAID[began]
    # An honest request on the same server is answered meanwhile and after.
    assert httpx.get(f"{slow.url}/health", timeout=5, verify=TLS).status_code == 200
    _no_server_error(slow)


def test_health_names_the_database_only_to_a_caller_with_the_key(slow: Server) -> None:
    anonymous = httpx.get(f"{slow.url}/health", timeout=10, verify=TLS)
    assert anonymous.status_code == 200 and "path" not in anonymous.json()["store"]
    assert str(slow.db_path) not in anonymous.text
    keyed = httpx.get(f"{slow.url}/health", headers={"X-API-Key": API_KEY}, timeout=10, verify=TLS)
    assert keyed.json()["store"]["path"] == str(slow.db_path)
    wrong = httpx.get(f"{slow.url}/health", headers={"X-API-Key": "wrong"}, timeout=10, verify=TLS)
    assert wrong.status_code == 200 and "path" not in wrong.json()["store"]
