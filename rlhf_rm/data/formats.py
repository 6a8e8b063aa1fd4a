"""Turn one decoded row into a PreferencePair, accepting the common preference-data layouts.

Layouts:
  explicit  {"prompt", "chosen", "rejected"}: strings, or chat message lists
  implicit  {"chosen", "rejected"}: two full texts sharing a dialogue prefix (HH-RLHF style);
            the prompt is the shared text up to the last prompt separator ("\\n\\nAssistant:"),
            or the shared leading messages for chat lists (TRL's implicit-prompt format).
"""

from __future__ import annotations

import os
from typing import Any

from rlhf_rm.data.examples import PreferencePair


class RowError(ValueError):
    """A row that cannot become an example; the message says what is wrong (without the location)."""


def parse_pair(row: Any, origin: str, prompt_separator: str = "\n\nAssistant:") -> PreferencePair:
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(f"missing key {key!r} (keys present: {sorted(row)})")
    chosen, rejected = row["chosen"], row["rejected"]
    _check_text("chosen", chosen)
    _check_text("rejected", rejected)
    if "prompt" in row and row["prompt"] is not None:
        prompt = row["prompt"]
        _check_text("prompt", prompt, allow_empty=True)
        if isinstance(prompt, list) and isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        elif isinstance(prompt, str) != isinstance(chosen, str) or isinstance(chosen, str) != isinstance(rejected, str):
            raise RowError("prompt, chosen and rejected must be all strings or all chat message lists")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = split_shared_prompt(chosen, rejected, prompt_separator)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = split_shared_messages(chosen, rejected)
    else:
        raise RowError("chosen and rejected must both be strings or both be chat message lists")
    if chosen == rejected:
        raise RowError("chosen and rejected responses are identical")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, origin=origin)


def split_shared_prompt(chosen: str, rejected: str, separator: str) -> tuple[str, str, str]:
    """Prompt = the longest shared prefix ending in `separator` (empty when none is shared)."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(separator)
    end = cut + len(separator) if cut >= 0 else 0
    return chosen[:end], chosen[end:], rejected[end:]


def split_shared_messages(chosen: list, rejected: list) -> tuple[list, list, list]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    # The responses must keep at least their last message each.
    shared = min(shared, len(chosen) - 1, len(rejected) - 1)
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _check_text(key: str, value: Any, allow_empty: bool = False) -> None:
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise RowError(f"{key!r} is empty")
        return
    if isinstance(value, list):
        if not value and not allow_empty:
            raise RowError(f"{key!r} is an empty message list")
        for position, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                    or not isinstance(message.get("role"), str):
                raise RowError(f"{key!r} message {position} must be an object with string 'role' and 'content'")
        if not allow_empty and not any(m["content"].strip() for m in value):
            raise RowError(f"{key!r} has only empty messages")
        return
    raise RowError(f"{key!r} must be a string or a list of chat messages, got {type(value).__name__}")
