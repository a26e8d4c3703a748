"""Issue 14 on Daytona: set-up environments kept as snapshots, and each phase's network.

Driven by the real `daytona` SDK against the loopback fake (tests/fakes/daytona.py): a snapshot
there is a copy of the sandbox's files, a sandbox created from it starts with a copy of that
copy, and every network-settings call is recorded per sandbox. Host names are resolved by the
machine's own resolver where the answer is known offline (`localhost`); public names, which this
machine cannot resolve, come from a fixed table handed to the provider as its resolver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from daytona import AsyncDaytona, DaytonaConfig

from backspace.orchestrator.egress.addresses import refusal
from backspace.orchestrator.egress.gate import BlockedAttempt, Gate, Phase
from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.environment.layer import LayerManifest, LayerStoreFull
from backspace.orchestrator.errors import SandboxError, SandboxLost
from backspace.orchestrator.sandboxes.daytona import (
    DaytonaOptions,
    DaytonaSandbox,
    DaytonaSandboxProvider,
)
from backspace.orchestrator.sandboxes.daytona_layers import DaytonaLayerStore
from tests.fakes.daytona import FakeDaytona, FakeSandbox

pytestmark = pytest.mark.timeout(60)

KEY = "dtn_ENVIRONMENTS0123456789"
PUBLIC = {
    "pypi.org": ["151.101.0.223", "151.101.64.223"],
    "files.pythonhosted.org": ["151.101.1.63"],
    "registry.npmjs.org": ["104.16.0.35", "104.16.1.35", "104.16.2.35", "104.16.3.35"],
    "mirror.internal.example": ["10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "nowhere.example": [],
}


async def table_or_system(host: str) -> Sequence[str]:
    """The fixed table for public names; the machine's resolver for anything else."""
    if host in PUBLIC:
        return PUBLIC[host]
    from backspace.orchestrator.sandboxes.daytona_network import system_resolver

    return await system_resolver(host)


@pytest.fixture(scope="module")
def dt() -> Iterator[FakeDaytona]:
    with pytest.MonkeyPatch.context() as env:
        # The SDK's aiohttp session trusts HTTP(S)_PROXY; keep the fake reachable.
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        with FakeDaytona(api_key=KEY) as fake:
            yield fake


def options(dt: FakeDaytona, instance: str, **extra: object) -> DaytonaOptions:
    return DaytonaOptions(
        api_key=KEY,
        api_url=dt.api_url,
        instance=instance,
        resolver=table_or_system,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def provider(
    dt: FakeDaytona, request: pytest.FixtureRequest
) -> AsyncIterator[DaytonaSandboxProvider]:
    instance = f"env-{request.node.name[:40]}"
    provider = DaytonaSandboxProvider(options(dt, instance, env_snapshots=2))
    yield provider
    await provider.aclose()
    assert left_behind(dt, instance) == []


def left_behind(dt: FakeDaytona, instance: str) -> list[str]:
    """Live sandboxes of this instance: every test closes all of its own."""
    return [s for s in dt.live() if dt.sandboxes[s].labels.get("backspace.instance") == instance]


def store_of(provider: DaytonaSandboxProvider) -> DaytonaLayerStore:
    assert isinstance(provider.layers, DaytonaLayerStore)
    return provider.layers


def manifest(key: str) -> LayerManifest:
    return LayerManifest(key=key, base_sha="a" * 40, environment_paths=(".venv",))


def key_of(n: int) -> str:
    return f"{n:02x}" * 32


def snapshot_names(dt: FakeDaytona, provider: DaytonaSandboxProvider) -> list[str]:
    prefix = store_of(provider).prefix
    return sorted(n for n in dt.live_snapshots() if n.startswith(prefix))


async def prepared(provider: DaytonaSandboxProvider, run_id: str) -> DaytonaSandbox:
    """A sandbox whose setup wrote into the work tree and the home."""
    sandbox = await provider.create(run_id)
    result = await sandbox.exec(
        "mkdir -p .venv ~/.cache/pip && echo installed > .venv/marker "
        "&& echo cached > ~/.cache/pip/wheel && echo 'print(1)' > app.py"
    )
    assert result.exit_code == 0, result.output
    return sandbox


# --- addresses --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104 - the address under test, not a bind
        "224.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1",
        "fc00::1",
        "2002:a00:1::",  # 6to4 around 10.0.0.1
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    reason = refusal(address)
    assert reason is not None and reason.startswith(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.0.223", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_a_non_address_is_refused_with_a_reason() -> None:
    assert refusal("pypi.org") == "'pypi.org' is not an IP address"


# --- layers -----------------------------------------------------------------------------------
async def test_a_layer_keeps_the_files_and_new_sandboxes_do_not_write_back(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    store = store_of(provider)
    assert store.identity() == "default"
    source = await prepared(provider, "setup-run")
    try:
        layer = await store.save(source, manifest(key_of(1)))
    finally:
        await source.close()
    assert layer.location == f"{store.prefix}{key_of(1)[:24]}"
    assert layer.manifest == manifest(key_of(1))
    assert (await store.find(key_of(1))) == layer

    first = await provider.create("agent-run", layer=layer)
    try:
        assert await first.read_file(f"{first.workdir}/.venv/marker") == b"installed\n"
        home = first.workdir.rsplit("/", 1)[0]
        assert await first.read_file(f"{home}/.cache/pip/wheel") == b"cached\n"
        changed = await first.exec("echo changed > .venv/marker && echo new > new.txt")
        assert changed.exit_code == 0
    finally:
        await first.close()
    kept = dt.snapshots[layer.location].dir
    assert (kept / "workspace/.venv/marker").read_text() == "installed\n"
    assert not (kept / "workspace/new.txt").exists()

    second = await provider.create("verify-run", layer=layer)
    try:
        assert await second.read_file(f"{second.workdir}/.venv/marker") == b"installed\n"
        with pytest.raises(FileNotFoundError):
            await second.read_file(f"{second.workdir}/new.txt")
    finally:
        await second.close()


async def test_find_says_none_for_an_unknown_key_and_for_a_snapshot_gone_behind_our_back(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    store = store_of(provider)
    assert await store.find(key_of(9)) is None
    source = await prepared(provider, "gone-setup")
    try:
        layer = await store.save(source, manifest(key_of(2)))
    finally:
        await source.close()
    async with AsyncDaytona(DaytonaConfig(api_key=KEY, api_url=dt.api_url, target="us")) as c:
        await c.snapshot.delete(layer.location)
    assert await store.find(key_of(2)) is None
    assert key_of(2) not in store.kept()


async def test_the_least_recently_used_snapshot_is_evicted_past_the_limit(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    store = store_of(provider)
    source = await prepared(provider, "evict-setup")
    try:
        one = await store.save(source, manifest(key_of(1)))
        two = await store.save(source, manifest(key_of(2)))
        assert await store.find(key_of(1)) == one  # one is now the most recently used
        three = await store.save(source, manifest(key_of(3)))
    finally:
        await source.close()
    assert snapshot_names(dt, provider) == sorted([one.location, three.location])
    assert two.location not in dt.live_snapshots()
    assert await store.find(key_of(2)) is None


async def test_a_layer_in_use_is_not_evicted_and_the_store_says_it_is_full(
    dt: FakeDaytona, dt_provider_one: DaytonaSandboxProvider
) -> None:
    provider = dt_provider_one
    store = store_of(provider)
    source = await prepared(provider, "full-setup")
    try:
        one = await store.save(source, manifest(key_of(1)))
        user = await provider.create("full-user", layer=one)
        try:
            with pytest.raises(LayerStoreFull) as full:
                await store.save(source, manifest(key_of(2)))
            assert "DAYTONA_ENV_SNAPSHOTS" in str(full.value)
            assert snapshot_names(dt, provider) == [one.location]
        finally:
            await user.close()
        two = await store.save(source, manifest(key_of(2)))
    finally:
        await source.close()
    assert snapshot_names(dt, provider) == [two.location]


@pytest.fixture
async def dt_provider_one(dt: FakeDaytona) -> AsyncIterator[DaytonaSandboxProvider]:
    provider = DaytonaSandboxProvider(options(dt, "env-one", env_snapshots=1))
    yield provider
    await provider.aclose()
    assert left_behind(dt, "env-one") == []


async def test_a_failed_snapshot_leaves_nothing_behind_and_says_why(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    store = store_of(provider)
    source = await prepared(provider, "fail-setup")
    try:
        dt.fail_snapshot(500)
        with pytest.raises(SandboxError) as failed:
            await store.save(source, manifest(key_of(4)))
        assert "could not keep the environment" in str(failed.value)
        assert KEY not in str(failed.value)
        assert snapshot_names(dt, provider) == []
        assert await store.find(key_of(4)) is None
        assert (await source.exec("true")).exit_code == 0  # the sandbox goes on
    finally:
        await source.close()


async def test_a_restarted_server_deletes_the_snapshots_it_has_no_manifest_for(
    dt: FakeDaytona,
) -> None:
    before = DaytonaSandboxProvider(options(dt, "env-restart"))
    other = DaytonaSandboxProvider(options(dt, "env-someone-else"))
    try:
        source = await prepared(before, "restart-setup")
        try:
            old = await store_of(before).save(source, manifest(key_of(5)))
            theirs = await store_of(other).save(source, manifest(key_of(5)))
        finally:
            await source.close()
    finally:
        await before.aclose()
    after = DaytonaSandboxProvider(options(dt, "env-restart"))
    try:
        assert await store_of(after).find(key_of(5)) is None
        assert old.location not in dt.live_snapshots()
        assert theirs.location in dt.live_snapshots()  # another instance's: never touched
    finally:
        await after.aclose()
        await other.aclose()


async def test_a_stale_snapshot_with_the_same_name_is_replaced(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    store = store_of(provider)
    assert await store.find(key_of(6)) is None  # the store has looked at Daytona already
    source = await prepared(provider, "stale-setup")
    try:
        name = store.name_for(key_of(6))
        await source.remote.create_snapshot(name)  # left by someone: 409 for our name
        await source.exec("echo fresh > .venv/marker")
        layer = await store.save(source, manifest(key_of(6)))
    finally:
        await source.close()
    assert layer.location == name
    assert (dt.snapshots[name].dir / "workspace/.venv/marker").read_text() == "fresh\n"


async def test_a_sandbox_from_a_vanished_layer_fails_clearly_and_leaves_nothing(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    store = store_of(provider)
    source = await prepared(provider, "vanished-setup")
    try:
        layer = await store.save(source, manifest(key_of(7)))
    finally:
        await source.close()
    async with AsyncDaytona(DaytonaConfig(api_key=KEY, api_url=dt.api_url, target="us")) as c:
        await c.snapshot.delete(layer.location)
    live = set(dt.live())
    with pytest.raises(SandboxError) as failed:
        await provider.create("vanished-run", layer=layer)
    assert layer.location in str(failed.value) and "not found" in str(failed.value)
    assert set(dt.live()) == live
    assert store.in_use(key_of(7)) == 0


async def test_identity_is_the_configured_snapshot(dt: FakeDaytona) -> None:
    provider = DaytonaSandboxProvider(options(dt, "env-identity", snapshot="python-3.12"))
    assert store_of(provider).identity() == "python-3.12"
    off = DaytonaSandboxProvider(options(dt, "env-off", env_snapshots=0))
    assert off.layers is None


# --- network ----------------------------------------------------------------------------------
class Blocked:
    def __init__(self) -> None:
        self.seen: list[BlockedAttempt] = []

    def __call__(self, attempt: BlockedAttempt) -> None:
        self.seen.append(attempt)


async def network_sandbox(
    provider: DaytonaSandboxProvider, run_id: str
) -> tuple[DaytonaSandbox, Gate, Blocked]:
    blocked = Blocked()
    gate = Gate(blocked)
    sandbox = await provider.create(run_id, gate=gate)
    return sandbox, gate, blocked


def fake_of(dt: FakeDaytona, sandbox: DaytonaSandbox) -> FakeSandbox:
    return dt.sandboxes[sandbox.remote.id]


async def test_each_phase_sets_the_network_block_all_by_default(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    sandbox, _, blocked = await network_sandbox(provider, "net-phases")
    try:
        fake = fake_of(dt, sandbox)
        assert fake.params["networkBlockAll"] is True  # closed from the start
        await sandbox.open_network(
            Phase.SETUP, HostList.parse(["pypi.org", "files.pythonhosted.org"])
        )
        await sandbox.open_network(Phase.AGENT, HostList())
        await sandbox.open_network(Phase.VERIFY, HostList())
        assert fake.network == [
            {"networkAllowList": "151.101.0.223/32,151.101.64.223/32,151.101.1.63/32"},
            {"networkBlockAll": True},
            {"networkBlockAll": True},
        ]
        assert fake.params["networkBlockAll"] is True
        await asyncio.sleep(0)
        assert blocked.seen == []
    finally:
        await sandbox.close()


async def test_with_block_all_off_backspace_leaves_the_network_alone(dt: FakeDaytona) -> None:
    provider = DaytonaSandboxProvider(options(dt, "net-open", network_block_all=False))
    try:
        sandbox = await provider.create("net-open", gate=Gate())
        try:
            await sandbox.open_network(Phase.SETUP, HostList.parse(["pypi.org"]))
            await sandbox.open_network(Phase.AGENT, HostList())
            fake = fake_of(dt, sandbox)
            assert fake.params["networkBlockAll"] is False and fake.network == []
        finally:
            await sandbox.close()
    finally:
        await provider.aclose()


async def test_a_name_resolving_to_a_private_address_is_refused_and_reported(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    sandbox, gate, blocked = await network_sandbox(provider, "net-private")
    try:
        hosts = HostList.parse(["localhost", "mirror.internal.example", "metadata.example"])
        await sandbox.open_network(Phase.SETUP, hosts)
        assert fake_of(dt, sandbox).network == [{"networkBlockAll": True}]
        await asyncio.sleep(0)
        reasons = {a.host: a.reason for a in blocked.seen}
        assert set(reasons) == {"localhost", "mirror.internal.example", "metadata.example"}
        assert "127.0.0.1 is a loopback address" in reasons["localhost"]
        assert "10.0.0.5 is a private" in reasons["mirror.internal.example"]
        assert "link-local" in reasons["metadata.example"]
        assert all(a.phase is Phase.SETUP for a in blocked.seen)
        assert gate.blocked == blocked.seen
    finally:
        await sandbox.close()


async def test_past_five_addresses_the_rest_are_dropped_and_named(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    sandbox, _, blocked = await network_sandbox(provider, "net-five")
    try:
        hosts = HostList.parse(
            ["pypi.org", "registry.npmjs.org", "*.pythonhosted.org", "nowhere.example"]
        )
        await sandbox.open_network(Phase.SETUP, hosts)
        sent = fake_of(dt, sandbox).network[-1]["networkAllowList"].split(",")
        assert sent == [
            "151.101.0.223/32",
            "151.101.64.223/32",
            "104.16.0.35/32",
            "104.16.1.35/32",
            "104.16.2.35/32",
        ]
        await asyncio.sleep(0)
        reasons = {a.host: a.reason for a in blocked.seen}
        assert "104.16.3.35" in reasons["registry.npmjs.org"]
        assert "at most 5" in reasons["registry.npmjs.org"]
        assert "wildcard" in reasons["*.pythonhosted.org"]
        assert "no IPv4 address" in reasons["nowhere.example"]
    finally:
        await sandbox.close()


async def test_a_network_update_on_a_vanished_sandbox_says_it_is_gone(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    sandbox = await provider.create("net-vanish")
    try:
        dt.vanish(sandbox.remote.id)
        with pytest.raises(SandboxLost) as lost:
            await sandbox.open_network(Phase.AGENT, HostList())
        assert KEY not in str(lost.value)
    finally:
        await sandbox.close()


# --- the setting ------------------------------------------------------------------------------
def test_daytona_env_snapshots_reaches_the_provider_and_a_bad_value_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backspace.app import sandbox_provider
    from backspace.config import SettingsError, load_settings

    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    made = sandbox_provider(load_settings(DAYTONA_API_KEY=KEY, DAYTONA_ENV_SNAPSHOTS="3"))
    assert isinstance(made, DaytonaSandboxProvider)
    assert store_of(made).max_snapshots == 3
    off = sandbox_provider(load_settings(DAYTONA_API_KEY=KEY, DAYTONA_ENV_SNAPSHOTS="0"))
    assert off.layers is None
    with pytest.raises(SettingsError, match="DAYTONA_ENV_SNAPSHOTS"):
        load_settings(DAYTONA_API_KEY=KEY, DAYTONA_ENV_SNAPSHOTS="-1")


# --- the janitor ---------------------------------------------------------------------------------
async def test_the_janitor_spares_a_live_runs_verification_sandbox(
    dt: FakeDaytona, provider: DaytonaSandboxProvider
) -> None:
    live = await provider.create("live-run")
    verifying = await provider.create("live-run-verify")
    dead = await provider.create("dead-run-verify")
    try:
        assert await provider.cleanup_orphans({"live-run"}) == 1
        alive = {s.id for s in [live, verifying, dead] if s.remote.id in dt.live()}
        assert alive == {live.id, verifying.id}
    finally:
        for sandbox in (live, verifying, dead):
            await sandbox.close()
