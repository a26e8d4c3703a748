"""The local sandbox's network door, end to end: real bubblewrap, real socat, the real proxy.

A loopback HTTP server on the host stands for a registry; sandboxed commands reach it by NAME
(`pypi.test`, mapped by the AddressMap) through the door, with curl and with Python's urllib, as
plain HTTP and through a CONNECT tunnel. What the phase does not allow is refused and reported
as a BlockedAttempt naming the command; a sandbox without a gate has no network at all.
"""

from __future__ import annotations

import asyncio
import http.server
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backspace.app import build_service
from backspace.config import SettingsError, load_settings
from backspace.orchestrator.egress.gate import BlockedAttempt, Gate, Phase
from backspace.orchestrator.egress.hosts import AddressMap, HostList
from backspace.orchestrator.egress.proxy import EgressProxy
from backspace.orchestrator.sandboxes.base import SandboxError, SandboxUnavailable
from backspace.orchestrator.sandboxes.local import LocalSandbox, LocalSandboxProvider

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY")


class Registry(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"package index at {self.path} for {self.headers['Host']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def registry() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def egress(registry: int) -> Iterator[EgressProxy]:
    proxy = EgressProxy(AddressMap.parse(f"pypi.test=127.0.0.1:{registry}"))
    yield proxy
    proxy.stop()


def _provider(parent: Path, **kwargs: object) -> LocalSandboxProvider:
    provider = LocalSandboxProvider(parent / f"root-{uuid.uuid4().hex[:6]}", **kwargs)  # type: ignore[arg-type]
    usable, message = provider.check()
    assert usable and provider.isolated, message
    return provider


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    """Below /tmp, 0711: as root, bubblewrap runs as `nobody` and must traverse it."""
    path = Path(tempfile.mkdtemp(prefix="backspace-test-egress-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def provider(parent: Path, egress: EgressProxy) -> LocalSandboxProvider:
    return _provider(parent, egress=egress)


@pytest.fixture
async def gated(provider: LocalSandboxProvider) -> AsyncIterator[tuple[LocalSandbox, Gate]]:
    gate = Gate()
    sandbox = await provider.create(f"e-{uuid.uuid4().hex[:10]}", gate=gate)
    try:
        yield sandbox, gate
    finally:
        await sandbox.close()


PYPI = HostList.parse(["pypi.test"])
CURL = "curl -sS --max-time 10"


async def test_an_allowed_name_is_fetched_with_curl_and_urllib_plain_and_tunnelled(
    gated: tuple[LocalSandbox, Gate],
) -> None:
    sandbox, gate = gated
    await sandbox.open_network(Phase.SETUP, PYPI)
    plain = await sandbox.exec(f"{CURL} http://pypi.test/simple/")
    assert plain.exit_code == 0, plain.output
    assert "package index at /simple/ for pypi.test" in plain.output
    tunnel = await sandbox.exec(f"{CURL} --proxytunnel http://pypi.test/simple/tunnel")
    assert tunnel.exit_code == 0, tunnel.output
    assert "package index at /simple/tunnel" in tunnel.output
    script = (
        "import http.client, os, urllib.request\n"
        "print(urllib.request.urlopen('http://pypi.test/urllib', timeout=10).read().decode())\n"
        "c = http.client.HTTPConnection('127.0.0.1', 3128, timeout=10)\n"
        "c.set_tunnel('pypi.test', 443)\n"
        "c.request('GET', '/connect')\n"
        "print(c.getresponse().read().decode())\n"
    )
    python = await sandbox.exec(f"python3 -c {_quote(script)}")
    assert python.exit_code == 0, python.output
    assert "package index at /urllib" in python.output
    assert "package index at /connect" in python.output
    assert gate.blocked == []


async def test_the_agent_phase_without_hosts_reaches_nothing_and_each_attempt_is_reported(
    provider: LocalSandboxProvider,
) -> None:
    reported: list[BlockedAttempt] = []
    gate = Gate(on_blocked=reported.append)
    sandbox = await provider.create(f"e-{uuid.uuid4().hex[:10]}", gate=gate)
    try:
        await sandbox.open_network(Phase.SETUP, PYPI)
        assert (await sandbox.exec(f"{CURL} http://pypi.test/")).exit_code == 0
        await sandbox.open_network(Phase.AGENT, HostList())
        command = f"{CURL} http://pypi.test/simple/ ; {CURL} https://pypi.test/"
        result = await sandbox.exec(command)
        assert "package index" not in result.output
        assert "403" in result.output or result.exit_code != 0
        assert [(b.host, b.port, b.phase, b.command) for b in gate.blocked] == [
            ("pypi.test", 80, Phase.AGENT, command),
            ("pypi.test", 443, Phase.AGENT, command),
        ]
        assert "no network access" in gate.blocked[0].reason
        await _settle()
        assert reported == gate.blocked  # reached the loop that made the gate
    finally:
        await sandbox.close()


async def test_a_name_outside_the_list_is_refused_with_a_hint(
    gated: tuple[LocalSandbox, Gate],
) -> None:
    sandbox, gate = gated
    await sandbox.open_network(Phase.SETUP, PYPI)
    result = await sandbox.exec(f"{CURL} http://files.example/x")
    assert "add `files.example` to [network] setup in .backspace.toml" in result.output
    assert [b.host for b in gate.blocked] == ["files.example"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433:{port}/",
        "http://localhost.:{port}/",
    ],
)
async def test_inside_addresses_are_refused_through_the_door(
    gated: tuple[LocalSandbox, Gate], registry: int, url: str
) -> None:
    sandbox, gate = gated
    await sandbox.open_network(Phase.SETUP, HostList.parse(["pypi.test", "localhost"]))
    target = url.format(port=registry)
    direct = await sandbox.exec(f"{CURL} {target}")  # NO_PROXY: straight to its own loopback
    assert "package index" not in direct.output
    result = await sandbox.exec(f"env -u NO_PROXY -u no_proxy {CURL} {target}")
    assert "package index" not in result.output
    assert "403" in result.output or "backspace egress" in result.output, result.output
    assert gate.blocked and all(b.command and target in b.command for b in gate.blocked)


async def test_going_around_the_proxy_reaches_nothing(
    gated: tuple[LocalSandbox, Gate], registry: int
) -> None:
    sandbox, _ = gated
    await sandbox.open_network(Phase.SETUP, PYPI)
    result = await sandbox.exec(f"{CURL} --noproxy '*' http://127.0.0.1:{registry}/")
    assert result.exit_code != 0 and "package index" not in result.output


async def test_proxy_environment_and_socket_only_in_a_gated_sandbox(
    gated: tuple[LocalSandbox, Gate], sandbox: LocalSandbox
) -> None:
    inside, _ = gated
    result = await inside.exec("env; test -S /run/backspace/egress.sock && echo door")
    for name in PROXY_VARIABLES:
        assert f"{name}=" in result.output
    assert "http_proxy=http://127.0.0.1:3128" in result.output
    assert "door" in result.output
    bare = await sandbox.exec("env; ls /run/backspace 2>&1; cat /proc/net/tcp")
    for name in PROXY_VARIABLES:
        assert f"{name}=" not in bare.output
    assert "No such file" in bare.output
    assert ":0C38" not in bare.output  # no socat listening


async def test_a_sandbox_without_a_gate_has_no_network_at_all(
    sandbox: LocalSandbox, registry: int
) -> None:
    result = await sandbox.exec(
        f"{CURL} http://127.0.0.1:{registry}/; {CURL} -x http://127.0.0.1:3128 http://pypi.test/"
    )
    assert result.exit_code != 0 and "package index" not in result.output
    with pytest.raises(SandboxUnavailable, match="gate"):
        await sandbox.open_network(Phase.SETUP, PYPI)


async def test_closing_the_sandbox_closes_its_door(provider: LocalSandboxProvider) -> None:
    sandbox = await provider.create(f"e-{uuid.uuid4().hex[:10]}", gate=Gate())
    door = sandbox.door
    assert door is not None and door.path.exists()
    assert door.path.parent == sandbox.base  # outside the workspace
    await sandbox.close()
    assert not door.path.exists()


async def test_without_socat_the_network_is_reported_degraded_and_cannot_open(
    parent: Path, egress: EgressProxy
) -> None:
    provider = _provider(parent, egress=egress, socat="socat-not-installed")
    assert "socat" in provider.limits_report()["degraded"]["network"]
    sandbox = await provider.create(f"e-{uuid.uuid4().hex[:10]}", gate=Gate())
    try:
        await sandbox.open_network(Phase.AGENT, HostList())  # nothing asked: nothing missing
        with pytest.raises(SandboxUnavailable, match="apt-get install socat"):
            await sandbox.open_network(Phase.SETUP, PYPI)
    finally:
        await sandbox.close()


def test_unsandboxed_mode_says_it_cannot_restrict_the_network(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(tmp_path / "root", allow_unsandboxed=True)
    provider.isolated = False
    assert "network" in provider.limits_report()["degraded"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


async def _settle() -> None:
    import asyncio

    for _ in range(3):
        await asyncio.sleep(0)


# --- the setting ------------------------------------------------------------------------------
def test_egress_resolve_is_parsed_and_wired_into_the_local_provider(tmp_path: Path) -> None:
    settings = load_settings(
        BACKSPACE_DB=str(tmp_path / "b.db"),
        BACKSPACE_SANDBOX="local",
        BACKSPACE_EGRESS_RESOLVE="pypi.internal=10.0.0.5:8080, Mirror.Test.=[fd00::1]:3141",
    )
    assert settings.egress_addresses.targets == {
        "pypi.internal": ("10.0.0.5", 8080),
        "mirror.test": ("fd00::1", 3141),
    }
    service = build_service(settings)
    try:
        sandboxes = service.sandboxes
        assert isinstance(sandboxes, LocalSandboxProvider)
        assert sandboxes.egress is not None
        assert sandboxes.egress.addresses == settings.egress_addresses
        assert not sandboxes.egress.running  # started by the first gated sandbox
    finally:
        asyncio.run(service.store.aclose())


@pytest.mark.parametrize("value", ["pypi.internal", "pypi.internal=10.0.0.5", "10.0.0.5=a:1"])
def test_a_bad_egress_resolve_stops_start_up_naming_the_variable(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(
        SettingsError, match=r"BACKSPACE_EGRESS_RESOLVE: .*(name=host:port|address)"
    ):
        load_settings(BACKSPACE_DB=str(tmp_path / "b.db"), BACKSPACE_EGRESS_RESOLVE=value)


async def test_a_sandbox_root_too_long_for_a_socket_is_a_clear_error(
    parent: Path, egress: EgressProxy
) -> None:
    deep = parent / ("d" * 100)
    deep.mkdir(mode=0o711)
    provider = _provider(deep, egress=egress)
    with pytest.raises(SandboxError, match=r"BACKSPACE_SANDBOX_ROOT.*shorter"):
        await provider.create(f"e-{uuid.uuid4().hex[:10]}", gate=Gate())
    assert list(provider.root.iterdir()) == []  # nothing left behind
