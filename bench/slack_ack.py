"""Slack ack: N signed slash commands sent at once to the real server; time to each 200 ack.
Then M mentions in a run's thread (follow-ups), one after another: time from sending each to
its acknowledgement arriving at the fake Slack (the 👀 reaction on the mention).

The real server runs as a subprocess with Slack configured (Bolt's real AsyncApp, slack_sdk's
real client posting to the recording fake Slack on loopback). Each `/backspace local:widgets ...`
starts a run (the scripted model finishes at once), so the server is busy while it acks; each
thread mention queues a follow-up run on that run's family.

    uv run python -m bench.slack_ack [--commands N] [--mentions M]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table, small_repo, summary
from bench.model_server import start_model
from tests.fakes.slack import FakeSlack, SlackSigner, app_mention_event, send
from tests.server import start_server

SECRET = "slack-signing-secret-0123456789"
BOT_TOKEN = "xoxb-bench-token"
CHANNEL = "C0BENCH"
FORM = "application/x-www-form-urlencoded"


async def burst(
    url: str, signer: SlackSigner, slack: FakeSlack, count: int, tag: str
) -> list[float]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        bodies = [
            signer.slash_command_body(
                text=f"local:widgets slack-bench {tag} {i}",
                user_id=f"U{i % 7}",
                channel_id=CHANNEL,
                response_url=slack.response_url(CHANNEL, f"U{i % 7}"),
            )
            for i in range(count)
        ]

        async def one(body: bytes) -> float:
            started = time.perf_counter()
            response = await send(client, f"{url}/slack/events", body, signer, content_type=FORM)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
            assert "Started run" in response.json()["text"], response.text
            return elapsed

        return list(await asyncio.gather(*(one(body) for body in bodies)))


async def mentions(url: str, signer: SlackSigner, slack: FakeSlack, count: int) -> list[float]:
    """Follow-ups in the thread of a warm-up run's status message, one at a time: seconds from
    sending each to its reaction arriving at the fake Slack."""
    status = next(c for c in slack.calls_to("chat.postMessage") if c["args"].get("blocks"))
    thread = str(status["response"]["ts"])
    took: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(count):
            ts = f"{1_800_000_000 + i}.000100"
            event = app_mention_event(
                f"<@U0BOT> slack-bench also case {i}", channel=CHANNEL, ts=ts, thread_ts=thread
            )
            started = time.monotonic()
            body = signer.event_body(event, event_id=f"Ev-bench-{i}")
            response = await send(client, f"{url}/slack/events", body, signer)
            assert response.status_code == 200, response.text
            await slack.wait_until(
                lambda ts=ts: any(r["timestamp"] == ts for r in slack.reactions),  # type: ignore[misc]
                timeout=10,
                interval=0.001,
            )
            (call,) = [
                c for c in slack.calls_to("reactions.add") if c["args"].get("timestamp") == ts
            ]
            took.append(call["time"] - started)
    return took


async def wait_until_idle(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            runs = (await client.get(f"{url}/api/runs")).json()["runs"]
            if all(run["status"] not in ("queued", "running") for run in runs):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the warm-up runs did not finish")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--mentions", type=int, default=50)
    args = parser.parse_args(argv)
    signer = SlackSigner(SECRET)
    model = start_model()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp,
            FakeSlack(token=BOT_TOKEN, team_id="T0001", bot_user_id="U0BOT") as slack,
        ):
            work = Path(tmp)
            small_repo(work / "repos")
            env = {
                "ANTHROPIC_API_KEY": "bench-key",
                "ANTHROPIC_BASE_URL": model.url,
                "BACKSPACE_LOCAL_REPOS": str(work / "repos"),
                "BACKSPACE_RUNS_PER_MINUTE": "1000000",  # no rate limit in a benchmark
                "BACKSPACE_RUNS_BURST": "100000",
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SECRET,
                "SLACK_API_URL": slack.api_url,
            }
            server = start_server(work / "server", env)
            try:
                asyncio.run(burst(server.url, signer, slack, 3, "warm"))
                # Steady state: the first runs import what a run needs (the model client's
                # HTTP stack, among others) on the event loop, once per process.
                asyncio.run(wait_until_idle(server.url))
                result = summary(asyncio.run(burst(server.url, signer, slack, args.commands, "go")))
                asyncio.run(wait_until_idle(server.url))
                thread = summary(asyncio.run(mentions(server.url, signer, slack, args.mentions)))
            finally:
                server.stop()
    finally:
        model.stop()
    ms = {k: v * 1000 for k, v in result.items() if k != "n"}
    print_table(
        f"Slack ack ({args.commands} slash commands at once)",
        [
            (
                str(int(result["n"])),
                f"{ms['p50']:.1f}",
                f"{ms['p90']:.1f}",
                f"{ms['p99']:.1f}",
                f"{ms['mean']:.1f}",
            )
        ],
        ("commands", "p50 ms", "p90 ms", "p99 ms", "mean ms"),
    )
    mention_ms = {k: v * 1000 for k, v in thread.items() if k != "n"}
    print_table(
        f"Slack ack ({args.mentions} thread mentions, one at a time, to the reaction)",
        [
            (
                str(int(thread["n"])),
                f"{mention_ms['p50']:.1f}",
                f"{mention_ms['p90']:.1f}",
                f"{mention_ms['p99']:.1f}",
                f"{mention_ms['mean']:.1f}",
            )
        ],
        ("mentions", "p50 ms", "p90 ms", "p99 ms", "mean ms"),
    )
    return {
        "p50_ms": ms["p50"],
        "p99_ms": ms["p99"],
        "mention_p50_ms": mention_ms["p50"],
        "mention_p99_ms": mention_ms["p99"],
    }


if __name__ == "__main__":
    main(sys.argv[1:])
