"""Characters a reader cannot see, removed from text before the model reads it.

A comment can hide instructions from the people who review it: zero-width characters split or
join words, bidirectional overrides show text in an order other than the one the model reads
("Trojan Source"), and the tags block (U+E0000-U+E007F) spells whole sentences invisibly. What
a person sees on GitHub should be what the model gets, so these go, as do C0 controls other
than tab and newline (the service refuses those in a prompt).
"""

from __future__ import annotations

import re

_HIDDEN = re.compile(
    "["
    "\u200b-\u200f"  # zero-width space, (non-)joiners, LRM, RLM
    "\u202a-\u202e"  # bidirectional embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u2069"  # bidirectional isolates
    "\ufeff"  # zero-width no-break space (BOM)
    "\U000e0000-\U000e007f"  # tags
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f"  # control characters (CR is turned into a newline below)
    "]"
)


def visible(text: str) -> str:
    """``text`` without hidden and bidirectional control characters; CRLF becomes LF."""
    return _HIDDEN.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
