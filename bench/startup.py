"""Start-up: `backspace serve` until `/health` answers 200, and `import backspace.app`.

    uv run python -m bench.startup [--starts 10]

Each start is a fresh `python -m backspace serve` (local sandbox, no Slack, no Daytona, no
model key) on a port it picks itself (PORT=0), timed from the spawn to the first 200 from
/health, polled every 10 ms; the server is then stopped with SIGTERM. The import time is a
fresh `python -c "import backspace.app"`, so both include the interpreter's own start.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table, summary

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)|\"port\": (\d+)")


def _env(work: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "PYTHONPATH": str(ROOT),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "BACKSPACE_DB": str(work / "backspace.db"),
        "BACKSPACE_SANDBOX": "local",
    }


def one_start(work: Path, timeout: float = 60) -> float:
    """Seconds from spawning `backspace serve` to a 200 from its /health."""
    work.mkdir(parents=True)
    log_path = work / "server.log"
    begin = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backspace", "serve"],
            cwd=work,
            env=_env(work),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = None
        while time.perf_counter() - begin < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_path.read_text()}")
            if port is None:
                found = LISTENING.search(log_path.read_bytes())
                port = int(found.group(1) or found.group(2)) if found else None
            if port is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        return time.perf_counter() - begin
                except httpx.HTTPError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"no healthy /health in {timeout} s:\n{log_path.read_text()}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def one_import() -> float:
    begin = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import backspace.app"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)},
        check=True,
    )
    return time.perf_counter() - begin


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=10, help="server starts (and imports)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backspace-bench-startup-") as tmp:
        starts = [one_start(Path(tmp) / f"s{i}") for i in range(args.starts)]
    imports = [one_import() for _ in range(args.starts)]
    serve = summary(starts)
    imp = summary(imports)
    print_table(
        f"start-up ({args.starts} fresh processes each)",
        [
            ("serve to a healthy /health", f"{serve['p50']:.2f} s", f"{serve['p90']:.2f} s"),
            ("python -c 'import backspace.app'", f"{imp['p50']:.2f} s", f"{imp['p90']:.2f} s"),
        ],
        ("what", "p50", "p90"),
    )
    return {"serve_p50_s": serve["p50"], "import_p50_s": imp["p50"]}


if __name__ == "__main__":
    main()
