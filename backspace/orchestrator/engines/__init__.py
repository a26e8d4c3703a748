"""Engines: what works in the sandbox between cloning and publishing (our loop, or Claude Code)."""

from backspace.orchestrator.engines.base import (
    DEFAULT_ENGINE,
    ENGINES,
    Engine,
    EngineJob,
    EngineRun,
    unknown_engine,
)

__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "EngineJob", "EngineRun", "unknown_engine"]
