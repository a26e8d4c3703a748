"""What carrying out one tool call produced: the result for the model and the event for viewers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    content: str
    is_error: bool = False
    event: tuple[str, dict[str, Any]] | None = None
