"""Load preference sources into validated examples: bad rows stop the run or are quarantined and counted."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses
from rlhf_rm.data.formats import RowError
from rlhf_rm.data.sources import in_split, iter_source, ranking_to_pairs


class DataError(ValueError):
    """A data problem, with the file and line that caused it."""


@dataclass
class DataReport:
    rows_read: int = 0
    used: int = 0  # rows that produced examples
    examples: int = 0  # examples produced (one row may give several, e.g. QA-Feedback's 6 pairs)
    other_split: int = 0  # rows assigned to the other split of a file without its own split
    without_comparison: int = 0  # rows with nothing to compare (e.g. a tree without ranked replies)
    ties: int = 0  # pairs labelled as equally good (probability 0.5)
    quarantined: Counter = field(default_factory=Counter)  # reason kind -> count
    quarantine_file: str | None = None

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "used": self.used, "examples": self.examples,
                "other_split": self.other_split, "without_comparison": self.without_comparison, "ties": self.ties,
                "quarantined": sum(self.quarantined.values()),
                "quarantined_by_reason": dict(self.quarantined), "quarantine_file": self.quarantine_file}


def normalize_source(source) -> dict:
    """A source is a path string or a mapping {path, format, weight, split, dev_fraction, as_pairs, ...}."""
    spec = {"path": str(source)} if isinstance(source, (str, Path)) else dict(source)
    spec.setdefault("format", "preference")
    spec.setdefault("weight", 1.0)
    spec.setdefault("split", None)
    spec.setdefault("dev_fraction", 0.2)
    spec.setdefault("as_pairs", None)
    spec.setdefault("name", Path(spec["path"]).parent.name or Path(spec["path"]).stem)
    return spec


def load_examples(
    sources: Iterable,
    on_error: str = "raise",
    quarantine_path: str | Path | None = None,
    limit: int | None = None,
    prompt_separator: str = "\n\nAssistant:",
) -> tuple[list[tuple[str, Example]], DataReport]:
    """Read every source into (source name, example) items; `limit` keeps the first N rows of each source."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(sources, (str, Path, dict)):
        sources = [sources]
    report = DataReport()
    examples: list[Example] = []
    quarantine = None
    try:
        for source in sources:
            spec = normalize_source(source)
            spec.setdefault("prompt_separator", prompt_separator)
            if not Path(spec["path"]).exists():
                raise DataError(f"{spec['path']}: file not found")
            rows_in_source = 0
            last_origin = None
            for origin, item, raw in iter_source(spec):
                row_origin = origin.split(" pair ")[0].split(" message ")[0]
                if row_origin != last_origin:  # converted rows can yield several items
                    if limit is not None and rows_in_source >= limit:
                        break
                    rows_in_source += 1
                    report.rows_read += 1
                    last_origin = row_origin
                    new_row = True
                else:
                    new_row = False
                if isinstance(item, RowError):
                    if on_error == "raise":
                        raise DataError(f"{origin}: {item} (set data.on_error=skip to quarantine bad rows)")
                    if quarantine is None:
                        quarantine_path = Path(quarantine_path or "quarantine.jsonl")
                        quarantine_path.parent.mkdir(parents=True, exist_ok=True)
                        quarantine = open(quarantine_path, "w", encoding="utf-8")
                        report.quarantine_file = str(quarantine_path)
                    report.quarantined[_reason_kind(str(item))] += 1
                    quarantine.write(json.dumps({"origin": origin, "reason": str(item), "row": raw},
                                                ensure_ascii=False, default=str) + "\n")
                    continue
                if not in_split(item, spec["split"], spec["dev_fraction"]):
                    report.other_split += new_row
                    continue
                produced = _as_configured(item, spec)
                examples.extend((spec["name"], example) for example in produced)
                report.examples += len(produced)
                report.ties += sum(isinstance(e, PreferencePair) and e.probability == 0.5 for e in produced)
                report.used += new_row
    finally:
        if quarantine is not None:
            quarantine.close()
    report.without_comparison = report.rows_read - report.used - sum(report.quarantined.values()) - report.other_split
    return examples, report


def _as_configured(example: Example, spec: dict) -> list[Example]:
    if isinstance(example, RankedResponses) and spec["as_pairs"]:
        return ranking_to_pairs(example, spec["as_pairs"])
    return [example]


def load_pairs(paths, on_error: str = "raise", quarantine_path=None, limit=None,
               prompt_separator: str = "\n\nAssistant:") -> tuple[list[Example], DataReport]:
    """Rows of pairs (or rankings) from JSONL/JSON/Parquet files, without source tags."""
    tagged, report = load_examples(paths, on_error, quarantine_path, limit, prompt_separator)
    return [example for _, example in tagged], report


def _reason_kind(reason: str) -> str:
    """Group quarantine reasons into a few countable kinds ("missing key 'chosen' ..." -> "missing key")."""
    for kind in ("not valid UTF-8", "invalid JSON", "missing key", "is empty", "empty message", "permutation",
                 "probability", "must be", "identical", "expected a JSON object"):
        if kind in reason:
            return kind
    return reason
