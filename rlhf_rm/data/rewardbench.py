"""RewardBench rows (allenai/reward-bench v1 and v2) → examples tagged with their subset and id.

  rewardbench   v1 ("filtered" split): {"prompt", "chosen", "rejected", "subset", optional "id"}; the prompt
                is a user turn (a string, or a message list ending with the user), chosen/rejected are
                assistant replies → one PreferencePair.
  rewardbench2  v2: {"id", "prompt", "chosen": [...], "rejected": [...], "subset", "num_correct", ...} →
                one RankedResponses with two rank levels (every chosen 0, every rejected 1), chosen first.

`prompt_style` says how the user turn is written, and must match how the scored checkpoint was trained:
  chat   message lists (user prompt, assistant reply), rendered by the checkpoint's chat template;
  plain  the HH-RLHF text convention: "\\n\\nHuman: {prompt}" + prompt_separator, reply " {response}".
`python -m rlhf_rm.evaluate` picks it from the checkpoint (rlhf_rm.json); training sources default to chat.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses
from rlhf_rm.data.formats import RowError, _check_text
from rlhf_rm.data.readers import read_rows

BENCHMARK_FORMATS = ("rewardbench", "rewardbench2")
PROMPT_STYLES = ("chat", "plain")
HUMAN_TURN = "\n\nHuman: "  # the plain-text user turn of HH-RLHF; the assistant turn is data.prompt_separator
TIES_SUBSET = "ties"  # RewardBench 2's subset scored by its own rule (rlhf_rm.evaluation.rewardbench.ties_score)
TIES_ID = re.compile(r"^(ref|tied):(\d+)$")  # a Ties row: the reference prompt or its tied variant, by prompt id
REQUIRED = ("prompt", "chosen", "rejected", "subset")


def parse_benchmark_row(row, origin: str, fmt: str, prompt_style: str, separator: str) -> Example:
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style={prompt_style!r}: choose one of {list(PROMPT_STYLES)}")
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}", "not an object")
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise RowError(f"missing key {missing[0]!r} for format {fmt} (keys present: {sorted(map(str, row))})",
                       "missing key")
    subset, item_id = row["subset"], row.get("id")
    if not isinstance(subset, str) or not subset.strip():
        raise RowError(f"'subset' must be a non-empty string, got {subset!r}", "wrong type")
    item_id = None if item_id is None else str(item_id)
    _check_prompt(row["prompt"])
    prompt = render_prompt(row["prompt"], prompt_style, separator)
    if fmt == "rewardbench":
        for key in ("chosen", "rejected"):
            _check_reply(key, row[key])
        if row["chosen"] == row["rejected"]:
            raise RowError("chosen and rejected responses are identical", "identical responses")
        return PreferencePair(prompt, render_reply(row["chosen"], prompt_style),
                              render_reply(row["rejected"], prompt_style), origin, subset=subset, item_id=item_id)
    chosen, rejected = _reply_list(row, "chosen"), _reply_list(row, "rejected")
    if "num_correct" in row and row["num_correct"] != len(chosen):
        raise RowError(f"'num_correct' is {row['num_correct']!r} but 'chosen' holds {len(chosen)} responses",
                       "inconsistent row")
    if set(chosen) & set(rejected):
        raise RowError("a response is both chosen and rejected", "identical responses")
    if subset.lower() == TIES_SUBSET and not (item_id and TIES_ID.match(item_id)):
        raise RowError(f"a Ties row needs an id 'ref:N' or 'tied:N' (N: the prompt id), got {item_id!r}",
                       "malformed row")
    return RankedResponses(prompt, [render_reply(r, prompt_style) for r in chosen + rejected],
                           [0] * len(chosen) + [1] * len(rejected), origin, subset=subset, item_id=item_id)


def _check_prompt(prompt) -> None:
    _check_text("prompt", prompt)
    if isinstance(prompt, list) and prompt[-1]["role"] != "user":
        raise RowError(f"'prompt': the last message is from {prompt[-1]['role']!r}, not 'user'", "malformed row")


def _check_reply(key: str, reply) -> None:
    if not isinstance(reply, str):
        raise RowError(f"{key!r} must be a string (one assistant reply), got {type(reply).__name__}", "wrong type")
    if not reply.strip():
        raise RowError(f"{key!r} is empty", "empty response")


def _reply_list(row: dict, key: str) -> list[str]:
    replies = row[key]
    if not isinstance(replies, list) or not replies:
        raise RowError(f"{key!r} must be a non-empty list of replies (RewardBench 2), got {replies!r:.80}",
                       "wrong type")
    for position, reply in enumerate(replies):
        _check_reply(f"{key}[{position}]", reply)
    return list(replies)


def render_prompt(prompt, style: str, separator: str):
    """The user turn(s) as the checkpoint reads them: a message list (chat) or HH-RLHF text (plain)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if style == "chat":
        return messages
    turns = [(HUMAN_TURN + m["content"]) if m["role"] == "user" else f"{separator} {m['content']}" for m in messages]
    return "".join(turns) + separator


def render_reply(reply: str, style: str):
    return [{"role": "assistant", "content": reply}] if style == "chat" else " " + reply


def detect_format(path: str | Path) -> str | None:
    """rewardbench / rewardbench2 when the file's first row looks like one (a `subset` key and chosen as a
    string or a list), else None. Only the first row is read."""
    from rlhf_rm.data.readers import expand_paths

    first = next(iter(read_rows(expand_paths(path)[0])), None)
    row = first.value if first is not None and first.error is None else None
    if not isinstance(row, dict) or not {"prompt", "chosen", "rejected", "subset"} <= set(row):
        return None
    if isinstance(row["chosen"], str):
        return "rewardbench"
    return "rewardbench2" if isinstance(row["chosen"], list) else None
