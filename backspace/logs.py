"""Logging: one line per record, the run id on every line of a run, secrets redacted.

`DEBUG=true` lowers the level to DEBUG. `BACKSPACE_LOG_FORMAT=json` writes one JSON object per
line for log collectors; `auto` (the default) does so when stderr is not a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar

from backspace.orchestrator.redact import Redactor

run_id_var: ContextVar[str | None] = ContextVar("run_id", default=None)


class RunContextFilter(logging.Filter):
    """Adds `run_id` to each record and redacts every known secret from the message."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = run_id_var.get()
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self.redactor.text(message) if self.redactor else message
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None)
        if run_id:
            entry["run_id"] = run_id
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        run_id = getattr(record, "run_id", None)
        prefix = f"[{run_id[:8]}] " if run_id else ""
        time = self.formatTime(record, "%H:%M:%S")
        return f"{time} {record.levelname:<7} {record.name}: {prefix}{record.getMessage()}"


def configure_logging(redactor: Redactor, *, debug: bool, json_format: bool | None = None) -> None:
    if json_format is None:
        json_format = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunContextFilter(redactor))
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in (
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "anthropic",
        "github",
        "urllib3",
        "uvicorn.access",
    ):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
