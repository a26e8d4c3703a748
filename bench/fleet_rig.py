"""What the fleet benchmarks share: real `backspace serve` replicas on one private PostgreSQL.

The same parts as tests/test_fleet.py: a private PostgreSQL in a temp directory
(tests/postgres.py; fsync off, Unix socket), the fake Anthropic, the fake Daytona (so a killed
replica's sandbox is deleted by the replica that reaps its run, and its commands with it), the
local git host's repositories at one shared path, each replica in a directory of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from bench.common import small_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.daytona import FakeDaytona
from tests.helpers import stop_and_remove
from tests.postgres import PostgresServer
from tests.server import Server, start_server

DAYTONA_KEY = "dtn_BENCHFLEET0123456789"


@dataclass
class Rig:
    url: str
    model: FakeAnthropic
    env: dict[str, str]
    root: Path
    replicas: list[Server] = field(default_factory=list)

    def start(self, *names: str) -> list[Server]:
        with ThreadPoolExecutor(len(names)) as pool:
            started = list(pool.map(lambda n: start_server(self.root / n, self.env), names))
        self.replicas.extend(started)
        return started

    def by_worker(self, worker: str) -> Server | None:
        """The replica whose process is this worker (a worker is named host:pid:random)."""
        pid = int(worker.split(":")[-2])
        return next((s for s in self.replicas if s.process.pid == pid), None)

    def alive(self, *besides: Server) -> list[Server]:
        return [s for s in self.replicas if s not in besides and s.process.poll() is None]

    async def running(self, run_id: str, timeout: float = 30) -> Server:
        """The replica executing the run, once one does."""
        deadline = time.monotonic() + timeout
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                cur = await conn.execute(
                    "SELECT worker_id FROM runs WHERE id = %s AND status = 'running'", (run_id,)
                )
                row = await cur.fetchone()
                server = self.by_worker(row[0]) if row else None
                if server is not None:
                    return server
                await asyncio.sleep(0.02)
        raise RuntimeError(f"run {run_id} never ran")


@contextmanager
def fleet(**settings: str) -> Iterator[Rig]:
    """A rig whose replicas (started with `Rig.start`) have these settings."""
    root = Path(tempfile.mkdtemp(prefix="backspace-bench-fleet-"))
    repos = root / "repos"
    repos.mkdir()
    small_repo(repos)
    postgres = PostgresServer().start()
    try:
        with FakeAnthropic(scenarios={}) as model, FakeDaytona(api_key=DAYTONA_KEY) as daytona:
            env = {
                "ANTHROPIC_API_KEY": "sk-ant-api03-bench-fleet-000",
                "ANTHROPIC_BASE_URL": model.url,
                "BACKSPACE_LOCAL_REPOS": str(repos),
                "BACKSPACE_DATABASE_URL": postgres.database("bench"),
                "DAYTONA_API_KEY": DAYTONA_KEY,
                "DAYTONA_API_URL": daytona.api_url,
                "BACKSPACE_INSTANCE": "bench-fleet",
                "BACKSPACE_RUNS_PER_MINUTE": "6000",  # the API's limit is shared by the replicas
                "BACKSPACE_RUNS_BURST": "100",
                **settings,
            }
            rig = Rig(env["BACKSPACE_DATABASE_URL"], model, env, root)
            try:
                yield rig
            finally:
                for server in rig.replicas:
                    stop_and_remove(server, server.log_path.parent)
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def bash(command: str) -> Reply:
    return Reply([ToolCall("bash", {"command": command})])


def finish() -> Reply:
    return Reply([ToolCall("finish", {"title": "Bench", "body": "Bench.", "tests": "none"})])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def submit(server: Server, prompt: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{server.url}/api/code",
            json={"repo_url": "local:widgets", "prompt": prompt},
            headers={"Accept": "application/json"},
        )
    answer.raise_for_status()
    run_id: str = answer.json()["id"]
    return run_id
