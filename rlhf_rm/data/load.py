"""Load preference files into validated pairs: bad rows stop the run or are quarantined and counted."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf_rm.data.examples import PreferencePair
from rlhf_rm.data.formats import RowError, parse_pair
from rlhf_rm.data.readers import read_rows


class DataError(ValueError):
    """A data problem, with the file and line that caused it."""


@dataclass
class DataReport:
    rows_read: int = 0
    used: int = 0
    quarantined: Counter = field(default_factory=Counter)  # reason -> count
    quarantine_file: str | None = None

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "used": self.used,
                "quarantined": sum(self.quarantined.values()),
                "quarantined_by_reason": dict(self.quarantined), "quarantine_file": self.quarantine_file}


def load_pairs(
    paths: str | Iterable[str],
    on_error: str = "raise",
    quarantine_path: str | Path | None = None,
    limit: int | None = None,
    prompt_separator: str = "\n\nAssistant:",
) -> tuple[list[PreferencePair], DataReport]:
    """Read every row of `paths`; `limit` keeps only the first N rows read (across files, in order)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    report = DataReport()
    pairs: list[PreferencePair] = []
    quarantine = None
    try:
        for path in paths:
            if not Path(path).exists():
                raise DataError(f"{path}: file not found")
            for row in read_rows(path):
                if limit is not None and report.rows_read >= limit:
                    break
                report.rows_read += 1
                try:
                    if row.error is not None:
                        raise RowError(row.error)
                    pairs.append(parse_pair(row.value, row.origin, prompt_separator))
                    report.used += 1
                except RowError as exc:
                    if on_error == "raise":
                        raise DataError(f"{row.origin}: {exc} (set data.on_error=skip to quarantine bad rows)") from None
                    if quarantine is None:
                        quarantine_path = Path(quarantine_path or "quarantine.jsonl")
                        quarantine_path.parent.mkdir(parents=True, exist_ok=True)
                        quarantine = open(quarantine_path, "w", encoding="utf-8")
                        report.quarantine_file = str(quarantine_path)
                    reason = str(exc)
                    report.quarantined[_reason_kind(reason)] += 1
                    quarantine.write(json.dumps({"origin": row.origin, "reason": reason,
                                                 "row": row.value if row.error is None else row.raw},
                                                ensure_ascii=False, default=str) + "\n")
    finally:
        if quarantine is not None:
            quarantine.close()
    return pairs, report


def _reason_kind(reason: str) -> str:
    """Group quarantine reasons into a few countable kinds ("missing key 'chosen' ..." -> "missing key")."""
    for kind in ("not valid UTF-8", "invalid JSON", "missing key", "is empty", "empty message", "must be",
                 "identical", "expected a JSON object"):
        if kind in reason:
            return kind
    return reason
