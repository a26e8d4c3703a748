"""Where Claude Code is installed on the host, its version, and where a sandbox sees it.

scripts/bootstrap installs the pinned npm package `@anthropic-ai/claude-code` (package.json,
package-lock.json) into the project's node_modules; its postinstall places the native binary
for this platform at bin/claude.exe, which needs no Node.js. The local sandbox binds the
package's directory read-only at `SANDBOX_DIR`, so the CLI runs inside the sandbox and nothing
it does can change it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "@anthropic-ai/claude-code"
PROJECT = Path(__file__).resolve().parents[3]
DEFAULT_DIR = PROJECT / "node_modules" / "@anthropic-ai" / "claude-code"
SANDBOX_DIR = "/opt/claude-code"
BINARY = "bin/claude.exe"


@dataclass(frozen=True)
class ClaudeCli:
    """The installed package: `directory` on the host."""

    directory: Path = DEFAULT_DIR

    @property
    def version(self) -> str | None:
        try:
            data = json.loads((self.directory / "package.json").read_text())
        except (OSError, ValueError):
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return str(version) if version else None

    @property
    def sandbox_binary(self) -> str:
        return f"{SANDBOX_DIR}/{BINARY}"

    def check(self) -> tuple[bool, str]:
        version = self.version
        if version is None:
            return False, (
                f"Claude Code is not installed ({PACKAGE} is missing from node_modules): run "
                "scripts/bootstrap --engines, which installs the version package-lock.json pins"
            )
        binary = self.directory / BINARY
        if not os.access(binary, os.X_OK) or binary.stat().st_size < 1024 * 1024:
            return False, (
                f"{PACKAGE} {version} is present but its native binary is not (its postinstall "
                "did not run, or this platform has none): run scripts/bootstrap --engines again"
            )
        return True, f"Claude Code {version} ({PACKAGE}, bound read-only into each sandbox)"
