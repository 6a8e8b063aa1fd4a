"""Iterate raw rows of JSONL / JSON / Parquet files, each tagged with its file and line (or row).

A reader never raises for bad content: it yields a RawRow with `error` and `kind` set, so the loader
decides (stop the run or quarantine and count). File-level problems (an empty file, a Parquet schema
that fits no layout) come as one RawRow whose origin is the file itself and whose `rows` says how
many input rows it stands for, so the loader's row accounting stays exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

DEFAULT_MAX_ROW_BYTES = 10 * 1024 * 1024  # data.max_row_bytes: a larger row is rejected unparsed
_PREVIEW_CHARS = 200  # how much of an oversized row the quarantine file keeps


@dataclass
class RawRow:
    origin: str  # "path:line" for text files, "path:row N" for columnar ones, "path" for the whole file
    value: Any = None  # the decoded row (usually a dict)
    error: str | None = None  # why the row could not be decoded at all
    raw: str | None = None  # the undecodable text (or a preview of it), kept for the quarantine file
    kind: str | None = None  # short reason kind for the counts ("invalid JSON", "row too large", ...)
    rows: int = 1  # input rows this entry stands for (a whole unreadable file: all of its rows)


def read_rows(path: str | Path, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
              expect_columns: Sequence[Sequence[str]] | None = None) -> Iterator[RawRow]:
    """Rows of one file. `expect_columns`: alternative column sets a Parquet file must contain one of."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, max_row_bytes)
    elif suffix == ".json":
        yield from _read_json(path, max_row_bytes)
    elif suffix in (".parquet", ".pq"):
        yield from _read_parquet(path, max_row_bytes, expect_columns)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _empty(path: Path) -> RawRow:
    return RawRow(str(path), error="empty file: it holds no rows", kind="empty file")


# -- JSONL: one row per line, streamed; a row over the limit is skipped without being held or parsed --
def _read_jsonl(path: Path, max_row_bytes: int) -> Iterator[RawRow]:
    any_row = False
    with open(path, "rb") as handle:
        line_number = 0
        while True:
            line = handle.readline(max_row_bytes + 1)
            if not line:
                break
            line_number += 1
            origin = f"{path}:{line_number}"
            if len(line) > max_row_bytes and not line.endswith(b"\n"):
                any_row = True
                yield _oversized_line(handle, line, origin, max_row_bytes)
                continue
            if not line.strip():
                continue  # blank lines carry no row; JSONL writers often end with one
            any_row = True
            ends_mid_line = not line.endswith(b"\n")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(origin, error=f"not valid UTF-8 ({exc.reason} at byte {exc.start} of the line)",
                             raw=line.decode("utf-8", errors="replace").rstrip("\n"), kind="not UTF-8")
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                if ends_mid_line:
                    yield RawRow(origin, error=f"the file ends mid-line (truncated write?): the last line is "
                                               f"incomplete JSON ({exc.msg} at column {exc.pos + 1})",
                                 raw=text, kind="truncated file")
                else:
                    yield RawRow(origin, error=f"invalid JSON: {exc.msg} at column {exc.pos + 1}",
                                 raw=text.rstrip("\n"), kind="invalid JSON")
                continue
            yield RawRow(origin, value=value)
    if not any_row:
        yield _empty(path)


def _oversized_line(handle, head: bytes, origin: str, max_row_bytes: int) -> RawRow:
    """Read past the rest of an oversized line in 1 MiB steps, keeping only its size and a preview."""
    size, chunk = len(head), head
    while not chunk.endswith(b"\n"):
        chunk = handle.readline(1 << 20)
        if not chunk:
            break
        size += len(chunk)
    size -= chunk.endswith(b"\n")
    preview = head[:_PREVIEW_CHARS].decode("utf-8", errors="replace")
    return RawRow(origin, error=f"row is {size:,} bytes, over data.max_row_bytes={max_row_bytes:,} (not parsed)",
                  raw=preview + "…", kind="row too large")


# -- JSON: one document holding a list of rows ------------------------------------------------
def _read_json(path: Path, max_row_bytes: int) -> Iterator[RawRow]:
    data = path.read_bytes()
    if not data.strip():
        yield _empty(path)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        yield RawRow(f"{path}:{line}", error=f"not valid UTF-8 ({exc.reason}); the JSON document cannot be read",
                     kind="not UTF-8")
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Unterminated string") or not text[exc.pos:].strip():
            yield RawRow(f"{path}:{exc.lineno}", error=f"the file ends mid-document (truncated write?): {exc.msg}",
                         kind="truncated file")
        else:
            yield RawRow(f"{path}:{exc.lineno}", error=f"invalid JSON: {exc.msg} at column {exc.colno}",
                         kind="invalid JSON")
        return
    if not isinstance(rows, list):
        yield RawRow(str(path), error=f"expected a JSON list of rows, got {type(rows).__name__}", kind="wrong type")
        return
    if not rows:
        yield _empty(path)
        return
    check_size = len(data) > max_row_bytes  # no row can be larger than the whole file
    for index, row in enumerate(rows, start=1):
        origin = f"{path}:row {index}"
        if check_size:
            size = len(json.dumps(row, ensure_ascii=False).encode("utf-8"))
            if size > max_row_bytes:
                yield RawRow(origin, error=f"row is {size:,} bytes, over data.max_row_bytes={max_row_bytes:,}",
                             kind="row too large")
                continue
        yield RawRow(origin, value=row)


# -- Parquet: columnar; the schema is checked once, row sizes from the Arrow buffers ------------
def _read_parquet(path: Path, max_row_bytes: int, expect_columns) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        yield RawRow(str(path), error=f"not a readable Parquet file: {exc}", kind="unreadable file")
        return
    num_rows = parquet.metadata.num_rows
    columns = parquet.schema_arrow.names
    if expect_columns and not any(set(layout) <= set(columns) for layout in expect_columns):
        yield RawRow(str(path), error=schema_mismatch_message(columns, expect_columns), kind="schema mismatch",
                     rows=max(num_rows, 1))
        return
    if num_rows == 0:
        yield _empty(path)
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        sizes = _row_bytes(batch)
        if int(sizes.max()) <= max_row_bytes:
            for row in batch.to_pylist():
                index += 1
                yield RawRow(f"{path}:row {index}", value=row)
            continue
        for position in range(batch.num_rows):  # only here: convert row by row, skipping the big ones
            index += 1
            size = int(sizes[position])
            if size > max_row_bytes:
                yield RawRow(f"{path}:row {index}", kind="row too large",
                             error=f"row is about {size:,} bytes, over data.max_row_bytes={max_row_bytes:,}")
            else:
                yield RawRow(f"{path}:row {index}", value=batch.slice(position, 1).to_pylist()[0])


def schema_mismatch_message(columns: Sequence[str], expect_columns: Sequence[Sequence[str]]) -> str:
    import difflib

    layouts = " or ".join("/".join(layout) for layout in expect_columns)
    message = f"Parquet columns {list(columns)} match no known layout: expected columns {layouts} (plus 'prompt')"
    wanted = sorted({name for layout in expect_columns for name in layout} - set(columns))
    hints = [f"{found!r} for {name!r}" for name in wanted
             for found in difflib.get_close_matches(name, [c for c in columns if c not in wanted], n=1, cutoff=0.75)]
    return message + (f" (did you mean {', '.join(hints)}?)" if hints else "")


def _row_bytes(batch):
    """Approximate bytes per row: string/binary lengths summed through lists and structs, 8 per scalar."""
    import numpy as np

    total = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        total += _value_bytes(column)
    return total


def _value_bytes(array):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _value_bytes(array.flatten())
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=inner, minlength=len(array)).astype(np.int64)
    if pa.types.is_struct(kind):
        total = np.zeros(len(array), dtype=np.int64)
        for child in array.flatten():
            total += _value_bytes(child)
        return total
    return np.full(len(array), 8, dtype=np.int64)
