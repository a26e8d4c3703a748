"""Where the agent's commands run: the `Sandbox` protocol and one file per implementation."""

from backspace.orchestrator.sandboxes.base import (
    ExecResult,
    Sandbox,
    SandboxError,
    SandboxProvider,
    SandboxUnavailable,
)

__all__ = ["ExecResult", "Sandbox", "SandboxError", "SandboxProvider", "SandboxUnavailable"]
