"""Load preference sources into validated examples: bad rows stop the run or are quarantined and counted,
identical examples are kept once, and every input row is accounted for (see DataReport)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses, ScoredResponse
from rlhf_rm.data.formats import RowError
from rlhf_rm.data.readers import DEFAULT_MAX_ROW_BYTES
from rlhf_rm.data.rewardbench import BENCHMARK_FORMATS
from rlhf_rm.data.sources import SourceItem, in_split, iter_source, ranking_to_pairs


class DataError(ValueError):
    """A data problem, with the file and line that caused it."""


@dataclass
class DataReport:
    """Where every input row went. Each row lands in exactly one bucket, so

        rows_read == used + quarantined + deduplicated + dropped_dev_overlap + other_split + without_comparison

    holds exactly (`unaccounted()` is 0; the loader raises otherwise). A row that gives several examples
    (QA-Feedback's 6 pairs, an OASST tree's rankings) is `used` if any of them is kept; otherwise it is
    `dropped_dev_overlap` if any was removed as a dev overlap, else `deduplicated` if any repeated an
    earlier example, else `other_split`. A whole-file problem (an empty file, a Parquet schema that fits
    no layout) counts as the rows the file holds, at least one.
    """

    rows_read: int = 0
    used: int = 0  # rows that gave at least one kept example
    examples: int = 0  # examples kept (one row may give several, e.g. QA-Feedback's 6 pairs)
    other_split: int = 0  # rows assigned to the other split of a file without its own split
    without_comparison: int = 0  # rows with nothing to compare (e.g. a tree without ranked replies)
    deduplicated: int = 0  # rows whose every example repeated an earlier one in this split
    duplicate_examples: int = 0  # examples dropped as repeats (including those of partly repeated rows)
    dev_overlap: int = 0  # examples whose prompt + responses also appear in dev (reported; dropped only if asked)
    dropped_dev_overlap: int = 0  # rows removed because of that overlap (data.drop_dev_overlap=true)
    ties: int = 0  # pairs labelled as equally good (probability 0.5)
    chat_examples: int = 0  # examples in chat messages (rendered by the chat template); the rest are plain text
    quarantined: Counter = field(default_factory=Counter)  # reason kind -> rows
    quarantine_file: str | None = None

    def unaccounted(self) -> int:
        """Rows in no bucket; 0 unless the loader has a bug."""
        return self.rows_read - (self.used + sum(self.quarantined.values()) + self.deduplicated
                                 + self.dropped_dev_overlap + self.other_split + self.without_comparison)

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "used": self.used, "examples": self.examples,
                "other_split": self.other_split, "without_comparison": self.without_comparison,
                "deduplicated": self.deduplicated, "duplicate_examples": self.duplicate_examples,
                "dev_overlap": self.dev_overlap, "dropped_dev_overlap": self.dropped_dev_overlap, "ties": self.ties,
                "chat_examples": self.chat_examples,
                "quarantined": sum(self.quarantined.values()),
                "quarantined_by_reason": dict(self.quarantined), "quarantine_file": self.quarantine_file}

    def add(self, other: "DataReport") -> None:
        """Add another report's counts to this one (several slices or sources of one split)."""
        for name in self.__dataclass_fields__:
            if name not in ("quarantined", "quarantine_file"):
                setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantined.update(other.quarantined)

    @classmethod
    def from_dict(cls, counts: dict) -> "DataReport":
        fields = {k: v for k, v in counts.items() if k in cls.__dataclass_fields__ and k != "quarantined"}
        return cls(**fields, quarantined=Counter(counts.get("quarantined_by_reason", {})))


def normalize_source(source) -> dict:
    """A source is a path string or a mapping {path, format, weight, split, dev_fraction, as_pairs, ...}
    (RewardBench formats also take prompt_style: chat | plain)."""
    spec = {"path": str(source)} if isinstance(source, (str, Path)) else dict(source)
    spec.setdefault("format", "preference")
    spec.setdefault("weight", 1.0)
    spec.setdefault("split", None)
    spec.setdefault("dev_fraction", 0.2)
    spec.setdefault("as_pairs", None)
    spec.setdefault("limit", None)  # the first N input rows of this source (data.limit / dev_limit, if smaller, win)
    spec.setdefault("name", Path(spec["path"]).parent.name or Path(spec["path"]).stem)
    if spec["format"] in BENCHMARK_FORMATS:
        spec.setdefault("prompt_style", "chat")  # chat | plain: how the user turn is written (data/rewardbench.py)
    return spec


def example_key(example: Example) -> str:
    """Identity for deduplication: prompt, responses in order and labels (not the origin)."""
    if isinstance(example, RankedResponses):
        body = ["ranking", example.prompt, example.responses, example.ranks, example.scores]
    elif isinstance(example, ScoredResponse):
        body = ["pointwise", example.prompt, example.response, example.score]
    else:
        body = ["pair", example.prompt, [example.chosen, example.rejected], example.probability, example.margin]
    if example.subset is not None:  # a benchmark row repeated in two subsets counts in both
        body += [example.subset, example.item_id]
    return _digest(body)


def is_chat(example: Example) -> bool:
    """Chat messages (the template renders them) rather than plain text."""
    response = responses_of(example)[0]
    return isinstance(example.prompt, list) or isinstance(response, list)


def content_key(example: Example) -> str:
    """Identity for the train/dev overlap check: the prompt and the set of responses, whatever the labels
    (a pair that appears flipped in dev still leaks its texts)."""
    responses = responses_of(example)
    return _digest([example.prompt, sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in responses)])


def responses_of(example: Example) -> list:
    """The example's responses, in order: chosen/rejected, a ranking's responses, or the one scored response."""
    if isinstance(example, PreferencePair):
        return [example.chosen, example.rejected]
    return [example.response] if isinstance(example, ScoredResponse) else example.responses


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def load_examples(
    sources: Iterable,
    on_error: str = "raise",
    quarantine_path: str | Path | None = None,
    limit: int | None = None,
    prompt_separator: str = "\n\nAssistant:",
    *,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    dedupe: bool = True,
    seen: set | None = None,
    dev_keys: set | frozenset | None = None,
    drop_dev_overlap: bool = False,
) -> tuple[list[tuple[str, Example]], DataReport]:
    """Read every source into (source name, example) items; `limit` keeps the first N rows of each source
    (a source's own `limit` caps it further: the smaller of the two applies).

    dedupe: keep only the first of identical examples (example_key); `seen` shares the keys across calls,
    so one split made of several sources is deduplicated as a whole.
    dev_keys: content_key()s of the dev split; matching examples are counted (dev_overlap) and, with
    drop_dev_overlap, removed.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(sources, (str, Path, dict)):
        sources = [sources]
    seen = set() if seen is None else seen
    report = DataReport()
    examples: list[tuple[str, Example]] = []
    quarantine = None
    try:
        for source in sources:
            spec = normalize_source(source)
            spec.setdefault("prompt_separator", prompt_separator)
            spec.setdefault("max_row_bytes", max_row_bytes)
            caps = [n for n in (limit, spec["limit"]) if n is not None]
            cap = min(caps) if caps else None
            path = Path(spec["path"])  # a file, a directory or a glob (sources.iter_source expands it)
            try:
                items = iter_source(spec)
                rows_in_source = 0
                for row_origin, group in itertools.groupby(items, key=lambda item: item.row):
                    if cap is not None and rows_in_source >= cap:
                        break
                    group = list(group)
                    rows = group[0].rows if cap is None else min(group[0].rows, cap - rows_in_source)
                    rows_in_source += rows
                    report.rows_read += rows
                    errors = [item for item in group if isinstance(item.item, RowError)]
                    if errors:
                        if on_error == "raise":
                            raise DataError(f"{errors[0].origin}: {errors[0].item} "
                                            f"(set data.on_error=skip to quarantine bad rows)")
                        if quarantine is None:
                            quarantine_path = Path(quarantine_path or "quarantine.jsonl")
                            quarantine_path.parent.mkdir(parents=True, exist_ok=True)
                            quarantine = open(quarantine_path, "w", encoding="utf-8")
                            report.quarantine_file = str(quarantine_path)
                        report.quarantined[errors[0].item.kind] += rows
                        for error in errors:
                            quarantine.write(_quarantine_line(error, rows))
                        continue
                    _account_row(group, spec, report, examples, seen if dedupe else None, dev_keys, drop_dev_overlap)
            except ValueError as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from exc
    finally:
        if quarantine is not None:
            quarantine.close()
    if report.unaccounted():  # not an `assert`: python -O would drop the check
        raise DataError(f"row accounting is off by {report.unaccounted()} (a loader bug): {report.as_dict()}")
    return examples, report


def _account_row(group: list[SourceItem], spec: dict, report: DataReport, examples: list,
                 seen: set | None, dev_keys, drop_dev_overlap: bool) -> None:
    """Keep the row's new examples and put the row in exactly one bucket."""
    if all(item.item is None for item in group):
        report.without_comparison += 1
        return
    kept, duplicates, overlapping = [], 0, 0
    for item in group:
        if item.item is None or not in_split(item.item, spec["split"], spec["dev_fraction"]):
            continue
        for example in _as_configured(item.item, spec):
            key = example_key(example) if seen is not None else None
            if key is not None and key in seen:
                duplicates += 1
                continue
            if dev_keys and content_key(example) in dev_keys:
                report.dev_overlap += 1
                if drop_dev_overlap:
                    overlapping += 1
                    continue
            if key is not None:
                seen.add(key)
            kept.append(example)
    report.duplicate_examples += duplicates
    if kept:
        report.used += 1
        report.examples += len(kept)
        report.ties += sum(isinstance(e, PreferencePair) and e.probability == 0.5 for e in kept)
        report.chat_examples += sum(is_chat(e) for e in kept)
        examples.extend((spec["name"], example) for example in kept)
    elif overlapping:
        report.dropped_dev_overlap += 1
    elif duplicates:
        report.deduplicated += 1
    else:
        report.other_split += 1


def _quarantine_line(error: SourceItem, rows: int) -> str:
    entry = {"origin": error.origin, "reason": str(error.item), "kind": error.item.kind, "row": error.raw}
    if rows > 1:
        entry["rows"] = rows  # a whole-file problem stands for all the file's rows
    return json.dumps(entry, ensure_ascii=False, default=str) + "\n"


def _as_configured(example: Example, spec: dict) -> list[Example]:
    if isinstance(example, RankedResponses) and spec["as_pairs"]:
        return ranking_to_pairs(example, spec["as_pairs"])
    return [example]


def load_pairs(paths, on_error: str = "raise", quarantine_path=None, limit=None,
               prompt_separator: str = "\n\nAssistant:", **options) -> tuple[list[Example], DataReport]:
    """Rows of pairs (or rankings) from JSONL/JSON/Parquet/Arrow files, without source tags.
    `options`: load_examples' keyword options (max_row_bytes, dedupe, ...)."""
    tagged, report = load_examples(paths, on_error, quarantine_path, limit, prompt_separator, **options)
    return [example for _, example in tagged], report
