"""What a model's tokens cost, in USD per million tokens, to report spend and enforce the limit."""

from __future__ import annotations

from dataclasses import dataclass

# (model id prefix, input $/MTok, output $/MTok); the first matching prefix wins.
PRICES: tuple[tuple[str, float, float], ...] = (
    ("claude-opus-4-0", 15.0, 75.0),
    ("claude-opus-4-1", 15.0, 75.0),
    ("claude-opus-4-2025", 15.0, 75.0),
    ("claude-opus", 5.0, 25.0),
    ("claude-sonnet", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-haiku-4", 1.0, 5.0),
    ("claude-haiku-5", 1.0, 5.0),
    ("claude-3-5-haiku", 0.8, 4.0),
    ("claude-", 3.0, 15.0),
)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, model: str, usage: object) -> None:
        """Add one model response's usage (an SDK `Usage`, whose fields may be None)."""
        fresh = int(getattr(usage, "input_tokens", 0) or 0)
        out = int(getattr(usage, "output_tokens", 0) or 0)
        write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        self.input_tokens += fresh
        self.output_tokens += out
        self.cache_creation_input_tokens += write
        self.cache_read_input_tokens += read
        price_in, price_out = price(model)
        self.cost_usd += (
            fresh * price_in + write * 1.25 * price_in + read * 0.1 * price_in + out * price_out
        ) / 1_000_000

    def to_event(self) -> dict[str, object]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def price(model: str) -> tuple[float, float]:
    """Input and output price per MTok; models that are not Claude (local servers) cost 0."""
    for prefix, price_in, price_out in PRICES:
        if model.startswith(prefix):
            return price_in, price_out
    return 0.0, 0.0
