"""Iterate raw rows of JSONL / JSON / Parquet files, each tagged with its file and line (or row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass
class RawRow:
    origin: str  # "path:line" for text files, "path:row N" for columnar ones
    value: Any = None  # the decoded row (usually a dict)
    error: str | None = None  # why the row could not be decoded at all
    raw: str | None = None  # the undecodable text, kept for the quarantine file


def read_rows(path: str | Path) -> Iterator[RawRow]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix in (".parquet", ".pq"):
        yield from _read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            origin = f"{path}:{line_number}"
            if not line.strip():
                continue  # blank lines carry no row; JSONL writers often end with one
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(origin, error=f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                             raw=line.decode("utf-8", errors="replace"))
                continue
            try:
                yield RawRow(origin, value=json.loads(text))
            except json.JSONDecodeError as exc:
                yield RawRow(origin, error=f"invalid JSON: {exc.msg} at column {exc.colno}", raw=text.rstrip("\n"))


def _read_json(path: Path) -> Iterator[RawRow]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON document: {exc}") from exc
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    for index, row in enumerate(rows, start=1):
        yield RawRow(f"{path}:row {index}", value=row)


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            index += 1
            yield RawRow(f"{path}:row {index}", value=row)
