"""Iterate raw rows of JSONL / JSON / Parquet files, each tagged with its file and line (or row).

A reader never raises for bad content: it yields a RawRow with `error` and `kind` set, so the loader
decides (stop the run or quarantine and count). File-level problems (an empty file, a Parquet schema
that fits no layout) come as one RawRow whose origin is the file itself and whose `rows` says how
many input rows it stands for, so the loader's row accounting stays exact.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

DEFAULT_MAX_ROW_BYTES = 10 * 1024 * 1024  # data.max_row_bytes: a larger row is rejected unparsed
TEXT_SUFFIXES = (".jsonl", ".ndjson", ".json")
COLUMNAR_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather", ".ipc")
_PREVIEW_CHARS = 200  # how much of an oversized row the quarantine file keeps


@dataclass
class RawRow:
    origin: str  # "path:line" for text files, "path:row N" for columnar ones, "path" for the whole file
    value: Any = None  # the decoded row (usually a dict)
    error: str | None = None  # why the row could not be decoded at all
    raw: str | None = None  # the undecodable text (or a preview of it), kept for the quarantine file
    kind: str | None = None  # short reason kind for the counts ("invalid JSON", "row too large", ...)
    rows: int = 1  # input rows this entry stands for (a whole unreadable file: all of its rows)


@dataclass(frozen=True)
class Part:
    """A slice of one file, so a large file is read by several tasks in parallel (see plan_parts).
    JSONL: lines from byte `start` up to byte `stop`; Parquet/Arrow: row groups / record batches
    [start, stop). `first_row`: rows (lines) before the slice, so origins keep the file's numbering."""

    start: int
    stop: int
    first_row: int
    rows: int  # rows (lines, for JSONL) in the slice


def expand_paths(pattern: str | Path) -> list[Path]:
    """A file, a directory (its data files, recursively, sorted) or a glob (`shards/*.parquet`)."""
    text = str(pattern)
    if any(ch in text for ch in "*?["):
        found = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        if not found:
            raise ValueError(f"{text}: no file matches this pattern")
        return found
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + COLUMNAR_SUFFIXES)
        if not found:
            raise ValueError(f"{path}: directory holds no data files ({', '.join(TEXT_SUFFIXES + COLUMNAR_SUFFIXES)})")
        return found
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    return [path]


def read_rows(path: str | Path, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
              expect_columns: Sequence[Sequence[str]] | None = None, part: Part | None = None) -> Iterator[RawRow]:
    """Rows of one file (or of one Part of it). `expect_columns`: alternative column sets a columnar
    file must contain one of."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, max_row_bytes, part)
    elif suffix == ".json":
        yield from _read_json(path, max_row_bytes)
    elif suffix in COLUMNAR_SUFFIXES:
        yield from _read_columnar(path, max_row_bytes, expect_columns, part)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} "
                         f"(use .jsonl, .json, .parquet or .arrow/.feather)")


def plan_parts(path: str | Path, rows_per_part: int) -> list[Part | None]:
    """Cut a file into Parts of about `rows_per_part` rows; [None] (read whole) for files that cannot
    be cut: JSON documents, unreadable files, and files smaller than one part."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _plan_jsonl(path, rows_per_part)
    if suffix in COLUMNAR_SUFFIXES:
        try:
            table = _ColumnarFile(path)
        except Exception:  # noqa: BLE001 -- the reader reports it, with the file name, as one row
            return [None]
        parts, start, first_row, rows = [], 0, 0, 0
        for index in range(table.num_chunks):
            rows += table.chunk_rows(index)
            if rows >= rows_per_part or index == table.num_chunks - 1:
                parts.append(Part(start, index + 1, first_row, rows))
                start, first_row, rows = index + 1, first_row + rows, 0
        return parts if len(parts) > 1 else [None]
    return [None]


def _plan_jsonl(path: Path, rows_per_part: int) -> list[Part | None]:
    parts, start, first_row, lines, offset = [], 0, 0, 0, 0
    with open(path, "rb") as handle:
        for line in handle:
            offset += len(line)
            lines += 1
            if lines >= rows_per_part:
                parts.append(Part(start, offset, first_row, lines))
                start, first_row, lines = offset, first_row + lines, 0
    if lines:
        parts.append(Part(start, offset, first_row, lines))
    return parts if len(parts) > 1 else [None]


_BOM = b"\xef\xbb\xbf"


def _empty(path: Path) -> RawRow:
    return RawRow(str(path), error="empty file: it holds no rows", kind="empty file")


# -- JSONL: one row per line, streamed; a row over the limit is skipped without being held or parsed --
def _read_jsonl(path: Path, max_row_bytes: int, part: Part | None = None) -> Iterator[RawRow]:
    any_row = False
    with open(path, "rb") as handle:
        line_number = 0
        if part is not None:
            handle.seek(part.start)
            line_number = part.first_row
        while part is None or handle.tell() < part.stop:
            line = handle.readline(max_row_bytes + 1)
            if not line:
                break
            if line_number == 0 and line.startswith(_BOM):
                line = line[len(_BOM):]  # Windows tools start UTF-8 files with a byte-order mark
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
    if not any_row and part is None:
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
    if data.startswith(_BOM):
        data = data[len(_BOM):]  # Windows tools start UTF-8 files with a byte-order mark
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


# -- Parquet / Arrow IPC: columnar; the schema is checked once, row sizes from the Arrow buffers ---------
class _ColumnarFile:
    """Parquet (chunks = row groups) or Arrow IPC file/stream (chunks = record batches), read chunk-wise."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        if path.suffix.lower() in (".parquet", ".pq"):
            self._parquet = pq.ParquetFile(path)
            self.names = self._parquet.schema_arrow.names
            self.num_rows = self._parquet.metadata.num_rows
            self.num_chunks = self._parquet.metadata.num_row_groups
            return
        self._parquet = None
        source = pa.memory_map(str(path))
        try:
            self._ipc = pa.ipc.open_file(source)
            self._batches = None
        except pa.ArrowInvalid:  # the streaming IPC format: no footer, read it whole (memory-mapped)
            source.seek(0)
            self._ipc = None
            self._batches = pa.ipc.open_stream(source).read_all().to_batches()
        schema = self._ipc.schema if self._ipc is not None else None
        self.num_chunks = self._ipc.num_record_batches if self._ipc is not None else len(self._batches)
        if schema is None:
            schema = self._batches[0].schema if self._batches else pa.schema([])
        self.names = schema.names
        self.num_rows = sum(self.chunk_rows(i) for i in range(self.num_chunks))

    def chunk_rows(self, index: int) -> int:
        if self._parquet is not None:
            return self._parquet.metadata.row_group(index).num_rows
        return (self._ipc.get_batch(index) if self._ipc is not None else self._batches[index]).num_rows

    def batches(self, start: int, stop: int):
        if self._parquet is not None:
            if stop > start:
                yield from self._parquet.iter_batches(batch_size=1024, row_groups=list(range(start, stop)))
            return
        for index in range(start, stop):
            yield self._ipc.get_batch(index) if self._ipc is not None else self._batches[index]


def _read_columnar(path: Path, max_row_bytes: int, expect_columns, part: Part | None) -> Iterator[RawRow]:
    import pyarrow as pa

    kind = "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "Arrow"
    try:
        table = _ColumnarFile(path)
    except (pa.ArrowException, OSError) as exc:
        yield RawRow(str(path), error=f"not a readable {kind} file: {exc}", kind="unreadable file")
        return
    start, stop = (part.start, part.stop) if part is not None else (0, table.num_chunks)
    rows_here = part.rows if part is not None else table.num_rows
    columns = table.names
    if expect_columns and not any(set(layout) <= set(columns) for layout in expect_columns):
        yield RawRow(str(path), error=schema_mismatch_message(columns, expect_columns, kind), kind="schema mismatch",
                     rows=max(rows_here, 1))
        return
    if table.num_rows == 0:
        yield _empty(path)
        return
    index = part.first_row if part is not None else 0
    for batch in table.batches(start, stop):
        if batch.num_rows == 0:
            continue
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


def schema_mismatch_message(columns: Sequence[str], expect_columns: Sequence[Sequence[str]],
                            kind: str = "Parquet") -> str:
    import difflib

    layouts = " or ".join("/".join(layout) for layout in expect_columns)
    message = f"{kind} columns {list(columns)} match no known layout: expected columns {layouts} (plus 'prompt')"
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
