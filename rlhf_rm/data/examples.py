"""Typed preference examples: what every reader produces and every batcher consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# A text is either a plain string or a list of chat messages ({"role", "content"}).
Text = Union[str, list]


@dataclass(frozen=True)
class PreferencePair:
    """One human judgement: `chosen` was preferred over `rejected` as a reply to `prompt`."""

    prompt: Text
    chosen: Text
    rejected: Text
    origin: str  # "file:line" of the row it came from, for error messages and reports
