"""The `backspace` command and `python -m backspace`: the CLI, handed the composition root.

This is the one module that imports backspace/app.py (tests/test_boundaries.py keeps it so):
the CLI, like every front end, sees only the orchestrator's service it is handed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from backspace.cli import Wiring
from backspace.cli import main as cli_main
from backspace.config import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from backspace.orchestrator.service import Service


# The composition root imports the whole service (a second or so): `backspace --version`, and a
# command refused for its settings, answer without paying for it.
def _service(settings: Settings) -> Service:
    from backspace.app import build_service

    return build_service(settings)


def _web_app(settings: Settings) -> ASGIApp:
    from backspace.app import create_app

    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, Wiring(service=_service, web_app=_web_app))


if __name__ == "__main__":
    sys.exit(main())
