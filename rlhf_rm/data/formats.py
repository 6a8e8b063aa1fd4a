"""Turn one decoded row into a PreferencePair, accepting the common preference-data layouts.

Layouts:
  explicit  {"prompt", "chosen", "rejected"}: strings, or chat message lists; optional
            "probability" (soft label in [0, 1], 0.5 = tie) and "margin" (a number)
  ranking   {"prompt", "responses": [...], "ranks": [...]}: K responses, ranks a permutation (0 = best)
  implicit  {"chosen", "rejected"}: two full texts sharing a dialogue prefix (HH-RLHF style);
            the prompt is the shared text up to the last prompt separator ("\\n\\nAssistant:"),
            or the shared leading messages for chat lists (TRL's implicit-prompt format).
  pointwise {"prompt", "response", "score"}: one response with a finite scalar label (a grade, a rating),
            for regression losses (loss=pointwise_mse); not a comparison.
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses, ScoredResponse


class RowError(ValueError):
    """A row that cannot become an example; the message says what is wrong (without the location),
    `kind` groups it for the quarantine counts ("missing key", "wrong type", ...)."""

    def __init__(self, message: str, kind: str = "invalid row"):
        super().__init__(message)
        self.kind = kind


# Roles every chat template we render knows; anything else ("usr", "bot", "human") would be rendered as
# something the template never saw in training, or dropped, without a word.
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})

PAIR_KEYS = ("prompt", "chosen", "rejected", "probability", "margin")
RANKING_KEYS = ("prompt", "responses", "ranks")
POINTWISE_KEYS = ("prompt", "response", "score")
KNOWN_KEYS = frozenset(PAIR_KEYS + RANKING_KEYS + POINTWISE_KEYS)


def parse_row(row: Any, origin: str, prompt_separator: str = "\n\nAssistant:") -> Example:
    """A pair, a ranking or a scored response, whichever layout the row has."""
    if isinstance(row, dict) and _looks_pointwise(row):
        return parse_scored(row, origin)
    if isinstance(row, dict) and _looks_like_ranking(row):
        return parse_ranking(row, origin)
    return parse_pair(row, origin, prompt_separator)


def _looks_pointwise(row: dict) -> bool:
    """A row with 'response' or 'score' and no key of the other layouts (a pair's or a ranking's extra 'score'
    column, e.g. a rating kept beside chosen/rejected, leaves the row what it was)."""
    return ("response" in row or "score" in row) and not any(
        key in row for key in ("chosen", "rejected", "responses", "ranks"))


def parse_scored(row: dict, origin: str) -> ScoredResponse:
    _require(row, POINTWISE_KEYS)
    _reject_misspelled(row, POINTWISE_KEYS)
    prompt, response, score = row["prompt"], row["response"], row["score"]
    _check_text("prompt", prompt)
    _check_text("response", response)
    if isinstance(prompt, list) and isinstance(response, str):
        response = [{"role": "assistant", "content": response}]
    elif isinstance(prompt, str) != isinstance(response, str):
        raise RowError("prompt and response must be both strings or both chat message lists", "wrong type")
    _check_response_ends_with_assistant("response", response)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise RowError(f"'score' must be a finite number, got {score!r}", "wrong type")
    return ScoredResponse(prompt=prompt, response=response, score=float(score), origin=origin)


def _looks_like_ranking(row: dict) -> bool:
    if "responses" in row or "ranks" in row:
        return True
    # A misspelled ranking ("respones", "rank") should be told about its own keys, not chosen/rejected.
    return not any(_close_key(k, ("chosen", "rejected")) or k in ("chosen", "rejected") for k in row) \
        and any(_close_key(k, ("responses", "ranks")) for k in row)


def parse_ranking(row: dict, origin: str) -> RankedResponses:
    _require(row, RANKING_KEYS)
    _reject_misspelled(row, RANKING_KEYS)
    prompt, responses, ranks = row["prompt"], row["responses"], row["ranks"]
    _check_text("prompt", prompt)
    if not isinstance(responses, list):
        raise RowError(f"'responses' must be a list of responses, got {type(responses).__name__}", "wrong type")
    if len(responses) < 2:
        raise RowError(f"'responses' must hold at least 2 responses, got {len(responses)}", "too few responses")
    for position, response in enumerate(responses):
        _check_text(f"responses[{position}]", response)
        _check_response_ends_with_assistant(f"responses[{position}]", response)
    if not isinstance(ranks, list) or any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
        raise RowError(f"'ranks' must be a list of integers, got {ranks!r}", "wrong type")
    if sorted(ranks) != list(range(len(responses))):
        raise RowError(f"'ranks' must be a permutation of 0..{len(responses) - 1}, got {ranks}",
                       "ranks not a permutation")
    if len({_freeze(r) for r in responses}) != len(responses):
        raise RowError("'responses' contains identical responses", "identical responses")
    return RankedResponses(prompt=prompt, responses=list(responses), ranks=list(ranks), origin=origin)


def parse_pair(row: Any, origin: str, prompt_separator: str = "\n\nAssistant:") -> PreferencePair:
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}", "not an object")
    _require(row, ("chosen", "rejected"))
    _reject_misspelled(row, PAIR_KEYS)
    chosen, rejected = row["chosen"], row["rejected"]
    _check_text("chosen", chosen)
    _check_text("rejected", rejected)
    if "prompt" in row and row["prompt"] is not None:
        # An explicit prompt must say something; only an implicit one (split from chosen/rejected) may be empty.
        prompt = row["prompt"]
        _check_text("prompt", prompt)
        if isinstance(prompt, list) and isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        elif isinstance(prompt, str) != isinstance(chosen, str) or isinstance(chosen, str) != isinstance(rejected, str):
            raise RowError("prompt, chosen and rejected must be all strings or all chat message lists", "wrong type")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = split_shared_prompt(chosen, rejected, prompt_separator)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = split_shared_messages(chosen, rejected)
    else:
        raise RowError("chosen and rejected must both be strings or both be chat message lists", "wrong type")
    _check_response_ends_with_assistant("chosen", chosen)
    _check_response_ends_with_assistant("rejected", rejected)
    if chosen == rejected:
        raise RowError("chosen and rejected responses are identical", "identical responses")
    probability = row.get("probability", 1.0)
    if probability is None:
        probability = 1.0
    if isinstance(probability, bool) or not isinstance(probability, (int, float)):
        raise RowError(f"'probability' must be a number in [0, 1], got {probability!r}", "wrong type")
    if not 0.0 <= probability <= 1.0:  # NaN fails this too
        raise RowError(f"'probability' must be a number in [0, 1], got {probability!r}", "probability out of range")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):
        raise RowError(f"'margin' must be a finite number, got {margin!r}", "wrong type")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, origin=origin,
                          probability=float(probability), margin=None if margin is None else float(margin)).oriented()


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


def _require(row: dict, keys) -> None:
    """Missing keys name the present key they were probably misspelled as."""
    for key in keys:
        if key not in row:
            unknown = [k for k in row if isinstance(k, str) and k not in KNOWN_KEYS]
            guess = difflib.get_close_matches(key, unknown, n=1, cutoff=0.6)
            hint = f"did you mean {guess[0]!r}?" if guess else f"keys present: {sorted(map(str, row))}"
            raise RowError(f"missing key {key!r} ({hint})", "missing key")


def _reject_misspelled(row: dict, layout_keys) -> None:
    """An optional key spelled wrong ("probabilty") would be silently ignored and change the label."""
    for key in row:
        if isinstance(key, str) and key not in KNOWN_KEYS:
            intended = _close_key(key, [k for k in layout_keys if k not in row])
            if intended:
                raise RowError(f"unknown key {key!r} (did you mean {intended!r}?)", "misspelled key")


def _close_key(key: str, candidates) -> str | None:
    """A near-identical spelling: similarity >= 0.8 and at most 2 characters longer or shorter,
    so extra columns such as 'prompt_id' or 'chosen_score' are left alone."""
    for match in difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.8):
        if abs(len(match) - len(key)) <= 2:
            return match
    return None


def _check_response_ends_with_assistant(key: str, response: Any) -> None:
    """A chat response is what the assistant said: its last message must be the assistant's."""
    if isinstance(response, list) and response and response[-1]["role"] != "assistant":
        raise RowError(f"{key!r}: the last message is from {response[-1]['role']!r}, not 'assistant'",
                       "response not from assistant")


def _freeze(text: Any) -> str:
    return text if isinstance(text, str) else repr(text)


def _check_text(key: str, value: Any, allow_empty: bool = False) -> None:
    empty = "empty prompt" if key == "prompt" else "empty response"
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise RowError(f"{key!r} is empty", empty)
        return
    if isinstance(value, list):
        if not value and not allow_empty:
            raise RowError(f"{key!r} is an empty message list", empty)
        for position, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                    or not isinstance(message.get("role"), str):
                raise RowError(f"{key!r} message {position} must be an object with string 'role' and 'content'",
                               "wrong type")
            if message["role"] not in CHAT_ROLES:
                raise RowError(f"{key!r} message {position} has unknown chat role {message['role']!r} "
                               f"(known: {', '.join(sorted(CHAT_ROLES))})", "unknown role")
        if not allow_empty and not any(m["content"].strip() for m in value):
            raise RowError(f"{key!r} has only empty messages", empty)
        return
    raise RowError(f"{key!r} must be a string or a list of chat messages, got {type(value).__name__}", "wrong type")
