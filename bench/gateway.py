"""The model gateway's cost per model call: a streamed Messages request through it vs direct.

    uv run python -m bench.gateway [--calls 200]

The fake model (tests/fakes/anthropic.py) runs in its own process and streams a ~100-token
answer with no delay, so what is measured is the path, not the model. The gateway runs in a
second process, as it runs in the server (its own thread and loop), with a key to add. The
client (httpx, one kept-alive connection, as the CLI keeps one) sends `--calls` streamed requests
each way, interleaved so that drift on a busy machine hits both alike, and reads every answer
to its end:
- direct: TCP to the fake model;
- gateway: the run's Unix socket, then the gateway's own TCP connection to the model;
- socat + gateway: TCP to a socat relay in front of the socket, the way a sandboxed CLI reaches
  it (127.0.0.1:3129 relayed by socat, see sandboxes/local.py).
Figures: p50 and p99 per call, and the overhead (p50 and p99 through - direct).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table, summary
from bench.model_server import ROOT, start_model

KEY = "sk-bench-not-a-real-key"
BODY = json.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": "gateway-bench"}],
    }
)
HEADERS = {
    "x-api-key": "backspace-gateway-placeholder",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


def serve(url: str, path: str) -> None:
    """The child: a gateway with one lease at `path`, until stdin closes."""
    from backspace.orchestrator.gateway import ModelGateway

    async def main() -> None:
        gateway = ModelGateway(KEY, url)
        lease = await gateway.open(
            "bench", budget_usd=1e9, emit=lambda kind, data: None, socket_path=Path(path)
        )
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await lease.close()
        await gateway.aclose()

    asyncio.run(main())


async def timed(client: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    async with client.stream("POST", url, content=BODY, headers=HEADERS) as response:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or b"message_stop" not in data:
        raise RuntimeError(f"a bad answer ({response.status_code}): {data[:200]!r}")
    return elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def measure(
    model_url: str, path: Path, relay_port: int | None, calls: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"direct": [], "gateway": [], "socat + gateway": []}
    direct = httpx.AsyncClient(timeout=30)
    through = httpx.AsyncClient(timeout=30, transport=httpx.AsyncHTTPTransport(uds=str(path)))
    relayed = httpx.AsyncClient(timeout=30)
    try:
        for i in range(calls + 5):  # the first five warm the connections up
            got = {
                "direct": await timed(direct, f"{model_url}/v1/messages"),
                "gateway": await timed(through, "http://127.0.0.1:3129/v1/messages"),
            }
            if relay_port is not None:
                got["socat + gateway"] = await timed(
                    relayed, f"http://127.0.0.1:{relay_port}/v1/messages"
                )
            if i >= 5:
                for name, value in got.items():
                    times[name].append(value)
    finally:
        for client in (direct, through, relayed):
            await client.aclose()
    return {name: values for name, values in times.items() if values}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--serve", nargs=2, metavar=("URL", "SOCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return {}
    model = start_model()
    workdir = Path(tempfile.mkdtemp(prefix="backspace-bench-gw-"))
    path = workdir / "model.sock"
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway", "--serve", model.url, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    relay = None
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the gateway did not start")
        relay_port = None
        socat = shutil.which("socat")
        if socat is not None:
            relay_port = free_port()
            relay = subprocess.Popen(
                [
                    socat,
                    "-b",
                    "262144",
                    f"TCP-LISTEN:{relay_port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                    f"UNIX-CONNECT:{path}",
                ]
            )
            time.sleep(0.3)
        times = asyncio.run(measure(model.url, path, relay_port, args.calls))
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait()
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
        model.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    stats = {name: summary(values) for name, values in times.items()}
    base = stats["direct"]
    rows: list[tuple[str, ...]] = []
    for name, s in stats.items():
        rows.append(
            (
                name,
                f"{s['p50'] * 1000:.2f} ms",
                f"{s['p99'] * 1000:.2f} ms",
                "" if name == "direct" else f"{(s['p50'] - base['p50']) * 1000:+.2f} ms",
                "" if name == "direct" else f"{(s['p99'] - base['p99']) * 1000:+.2f} ms",
            )
        )
    print_table(
        f"a streamed model call, {args.calls} each way",
        rows,
        ("path", "p50", "p99", "overhead p50", "overhead p99"),
    )
    gateway = stats["gateway"]
    return {
        "direct_p50_ms": base["p50"] * 1000,
        "gateway_p50_ms": gateway["p50"] * 1000,
        "overhead_p50_ms": (gateway["p50"] - base["p50"]) * 1000,
        "overhead_p99_ms": (gateway["p99"] - base["p99"]) * 1000,
    }


if __name__ == "__main__":
    main()
