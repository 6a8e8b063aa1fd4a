"""Source formats: each turns one file into examples, tagged with file:line/row.

  preference    rows of pairs or rankings (see formats.py); JSONL, JSON, Parquet or Arrow
  oasst_trees   OpenAssistant message trees: ranked sibling replies → a ranking per prompter turn
  qa_feedback   QA-Feedback: 4 predictions, 6 pairwise labels (1/2 = first/second better, 0 = tie)
                → pairs with probability labels (tie → 0.5)
  conala_grades CoNaLa human grades 0–4 from several graders → a ranking by mean grade (ties kept),
                or pairs with margin = grade difference and probability from it
  rewardbench   RewardBench v1 rows {prompt, chosen, rejected, subset} → pairs tagged with their subset
  rewardbench2  RewardBench 2 rows {prompt, chosen: [...], rejected: [...], subset} → a ranking with two
                levels (every chosen above every rejected), tagged with subset and id (rewardbench.py)

A ranking can be turned into pairs (`as_pairs: adjacent | all`) for pairwise losses.
Files without their own dev split are split by a hash of the prompt (`split`, `dev_fraction`),
so one prompt never lands in both train and dev; OpenAssistant files by a hash of the message tree id,
so no conversation tree (whose rankings have different prompts) lands on both sides.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses
from rlhf_rm.data.formats import RowError, parse_row
from rlhf_rm.data.readers import RawRow, expand_paths, read_rows
from rlhf_rm.data.rewardbench import BENCHMARK_FORMATS, parse_benchmark_row

FORMATS = ("preference", "oasst_trees", "qa_feedback", "conala_grades", *BENCHMARK_FORMATS)
PREFERENCE_COLUMNS = (("chosen", "rejected"), ("responses", "ranks"), ("response", "score"))  # Parquet layouts the preference format reads


@dataclass
class SourceItem:
    """What one input row gave: an example, a RowError, or None (nothing to compare).
    A row may give several items (QA-Feedback's 6 pairs, an OASST tree's rankings); `row` ties them
    together for the loader's row accounting."""

    row: str  # origin of the input row: "path:line", "path:row N", or "path" for a whole-file problem
    origin: str  # origin of this item, e.g. "path:3 pair (1,2)"
    item: Example | RowError | None
    raw: Any = None  # the row as read, for the quarantine file
    rows: int = 1  # input rows `row` stands for (an unreadable Parquet file: all of its rows)


def iter_source(spec: dict) -> Iterator[SourceItem]:
    """Every input row of one source (a file, a directory or a glob of files), in file order, as one or
    more SourceItems. spec["part"] (a readers.Part of the single file spec["path"]) reads only that slice."""
    part = spec.get("part")
    for path in [Path(spec["path"])] if part is not None else expand_paths(spec["path"]):
        yield from _iter_file(spec, path, part)


def _iter_file(spec: dict, path: Path, part) -> Iterator[SourceItem]:
    """spec: a source as load.normalize_source completes it, plus the loader's prompt_separator and max_row_bytes."""
    fmt, max_row_bytes = spec["format"], spec["max_row_bytes"]
    if fmt == "preference":
        separator = spec["prompt_separator"]
        for row in read_rows(path, max_row_bytes, expect_columns=PREFERENCE_COLUMNS, part=part):
            if row.error is not None:
                yield _unreadable(row)
                continue
            try:
                yield SourceItem(row.origin, row.origin, parse_row(row.value, row.origin, separator), row.value)
            except RowError as exc:
                yield SourceItem(row.origin, row.origin, exc, row.value)
    elif fmt == "oasst_trees":
        yield from _oasst(path, max_row_bytes)
    elif fmt == "qa_feedback":
        yield from _qa_feedback(path, spec.get("include_passages", False), max_row_bytes)
    elif fmt == "conala_grades":
        yield from _conala(path, max_row_bytes)
    elif fmt in BENCHMARK_FORMATS:
        yield from _benchmark(path, fmt, spec, part)
    else:
        raise ValueError(f"{path}: unknown data format {fmt!r}; choose one of {FORMATS}")


def _unreadable(row: RawRow) -> SourceItem:
    return SourceItem(row.origin, row.origin, RowError(row.error, row.kind or "invalid row"), row.raw, row.rows)


def in_split(example: Example, split: str | None, dev_fraction: float) -> bool:
    """Deterministic train/dev membership keyed by the example's split_key (an OASST tree id), else its prompt."""
    if split is None:
        return True
    key = example.split_key
    if key is None:
        key = example.prompt if isinstance(example.prompt, str) else json.dumps(example.prompt, sort_keys=True)
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 10_000
    is_dev = bucket < dev_fraction * 10_000
    return is_dev if split == "dev" else not is_dev


def ranking_to_pairs(ranking: RankedResponses, mode: str) -> list[PreferencePair]:
    """adjacent: best vs 2nd, 2nd vs 3rd, ...; all: every pair with different ranks.
    The margin is the human score difference where scores exist (grades), else the rank difference."""
    order = sorted(range(len(ranking.responses)), key=lambda i: ranking.ranks[i])
    if mode == "adjacent":
        candidates = list(zip(order, order[1:]))
    elif mode == "all":
        candidates = list(itertools.combinations(order, 2))
    else:
        raise ValueError(f"as_pairs must be 'adjacent' or 'all', got {mode!r}")
    scores = ranking.scores or [-float(r) for r in ranking.ranks]
    return [PreferencePair(ranking.prompt, ranking.responses[a], ranking.responses[b], ranking.origin,
                           margin=float(scores[a] - scores[b]), split_key=ranking.split_key, subset=ranking.subset,
                           item_id=ranking.item_id)
            for a, b in candidates if ranking.ranks[a] < ranking.ranks[b]]


def _benchmark(path: Path, fmt: str, spec: dict, part) -> Iterator[SourceItem]:
    for row in read_rows(path, spec["max_row_bytes"], expect_columns=(("prompt", "chosen", "rejected", "subset"),),
                         part=part):
        if row.error is not None:
            yield _unreadable(row)
            continue
        try:
            item = parse_benchmark_row(row.value, row.origin, fmt, spec["prompt_style"], spec["prompt_separator"])
        except RowError as exc:
            item = exc
        yield SourceItem(row.origin, row.origin, item, row.value)


# -- OpenAssistant ------------------------------------------------------------------------------
def _oasst(path: Path, max_row_bytes: int) -> Iterator[SourceItem]:
    for row in read_rows(path, max_row_bytes):
        if row.error is not None:
            yield _unreadable(row)
            continue
        tree = row.value
        if not isinstance(tree, dict) or not isinstance(tree.get("prompt"), dict):
            yield SourceItem(row.origin, row.origin,
                             RowError("expected a message tree with a 'prompt' message", "malformed row"), tree)
            continue
        # Every ranking of a tree shares its split key: the tree's id (the root message's id in exports
        # without message_tree_id), so `split: dev` holds out whole trees.
        tree_id = tree.get("message_tree_id") or tree["prompt"].get("message_id")
        if not isinstance(tree_id, str) or not tree_id:
            yield SourceItem(row.origin, row.origin, RowError(
                "message tree without an id ('message_tree_id' or the prompt's 'message_id')", "missing key"), tree)
            continue
        rankings = [replace(r, split_key=f"oasst tree {tree_id}")
                    for r in _oasst_rankings(tree["prompt"], [], row.origin)]
        for ranking in rankings:
            yield SourceItem(row.origin, ranking.origin, ranking)
        if not rankings:
            yield SourceItem(row.origin, row.origin, None)  # no prompter turn with 2+ ranked replies


def _oasst_rankings(message: dict, history: list, origin: str) -> Iterator[RankedResponses]:
    role = "user" if message.get("role") == "prompter" else "assistant"
    conversation = history + [{"role": role, "content": message.get("text", "")}]
    replies = [r for r in message.get("replies", []) if not r.get("deleted")]
    ranked = [r for r in replies if r.get("rank") is not None and r.get("text", "").strip()]
    if role == "user" and len(ranked) >= 2:
        ranked.sort(key=lambda r: r["rank"])
        texts = [r["text"] for r in ranked]
        if len(set(texts)) == len(texts):
            yield RankedResponses(prompt=conversation, responses=texts, ranks=list(range(len(texts))),
                                  origin=f"{origin} message {message.get('message_id', '')}".rstrip())
    for reply in replies:
        yield from _oasst_rankings(reply, conversation, origin)


# -- QA-Feedback --------------------------------------------------------------------------------
QA_PAIRS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]


def _qa_feedback(path: Path, include_passages: bool, max_row_bytes: int) -> Iterator[SourceItem]:
    for row in read_rows(path, max_row_bytes):
        if row.error is not None:
            yield _unreadable(row)
            continue
        item = row.value
        try:
            pairs = _qa_pairs(item, row.origin, include_passages)
        except KeyError as exc:
            yield SourceItem(row.origin, row.origin, RowError(f"missing key {exc.args[0]!r}", "missing key"), item)
            continue
        except RowError as exc:
            yield SourceItem(row.origin, row.origin, exc, item)
            continue
        except (TypeError, AttributeError, ValueError) as exc:
            yield SourceItem(row.origin, row.origin, RowError(f"malformed QA-Feedback item: {exc}", "malformed row"),
                             item)
            continue
        for pair in pairs:
            yield SourceItem(row.origin, pair.origin, pair)
        if not pairs:
            yield SourceItem(row.origin, row.origin, None)  # all four predictions identical


def _qa_pairs(item: dict, origin: str, include_passages: bool) -> list[PreferencePair]:
    labels = item["preference"]
    if isinstance(labels, str):
        labels = json.loads(labels)
    if not isinstance(labels, list) or len(labels) != 6 or any(label not in (0, 1, 2) for label in labels):
        raise RowError(f"'preference' must hold 6 labels in {{0, 1, 2}}, got {labels!r}", "malformed row")
    question = item["question"]
    if include_passages:
        passages = item.get("passages") or []
        context = "\n".join(f"{p[0]}: {p[1]}" if isinstance(p, list) else str(p) for p in passages)
        question = f"{context}\n\n{question}"
    prompt = [{"role": "user", "content": question}]
    pairs = []
    for (a, b), label in zip(QA_PAIRS, labels):
        first, second = item[f"prediction {a}"], item[f"prediction {b}"]
        if first.strip() == second.strip():
            continue  # identical answers carry no preference
        chosen, rejected = (second, first) if label == 2 else (first, second)
        pairs.append(PreferencePair(prompt, chosen.strip(), rejected.strip(), f"{origin} pair ({a},{b})",
                                    probability=0.5 if label == 0 else 1.0))
    return pairs


# -- CoNaLa grades ------------------------------------------------------------------------------
CONALA_CANDIDATES = ("snippet", "baseline", "tranx-annot", "best-tranx", "best-tranx-rerank", "codex")


def _conala(path: Path, max_row_bytes: int) -> Iterator[SourceItem]:
    for row in read_rows(path, max_row_bytes):
        if row.error is not None:
            yield _unreadable(row)
            continue
        item = row.value
        try:
            ranking = _conala_ranking(item, row.origin)
        except (KeyError, ValueError, SyntaxError, AttributeError, TypeError) as exc:
            yield SourceItem(row.origin, row.origin, RowError(f"malformed CoNaLa item: {exc}", "malformed row"), item)
            continue
        yield SourceItem(row.origin, row.origin, ranking)  # None: fewer than two distinct grades


def _conala_ranking(item: dict, origin: str) -> RankedResponses | None:
    grades: dict[str, list[float]] = {}
    for name in CONALA_CANDIDATES:
        if name not in item or f"grade-{name}" not in item:
            continue
        code = item[name][0] if isinstance(item[name], list) else item[name]
        raw = item[f"grade-{name}"]
        raw = ast.literal_eval(raw) if isinstance(raw, str) else raw
        if code.strip():
            grades.setdefault(code.strip(), []).extend(float(g) for g in raw.values())
    if len(grades) < 2:
        return None  # fewer than two distinct candidates: nothing to compare
    means = {code: sum(g) / len(g) for code, g in grades.items()}
    ordered = sorted(means, key=lambda code: -means[code])
    distinct = sorted(set(means.values()), reverse=True)
    ranks = [distinct.index(means[code]) for code in ordered]  # dense ranks: equal means tie
    if len(distinct) < 2:
        return None
    return RankedResponses([{"role": "user", "content": item["intent"]}], ordered, ranks, origin,
                           scores=[means[code] for code in ordered])
