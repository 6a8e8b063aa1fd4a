"""Cache of tokenized splits as Arrow IPC files, so a second run with the same data and tokenizer skips
reading, validating and tokenizing.

Location: $RLHF_RM_CACHE/tokenized/ (default ~/.cache/rlhf_rm/tokenized/). One entry per split:
`<key>.arrow` (one row per encoded group, the split's summary in the schema metadata) plus the
split's quarantine files as `<key>.<source>.quarantine.jsonl`. The key is a sha256 over everything
the groups depend on (see `cache_key`), so a stale entry is never reused: change the data, the
tokenizer, its chat template, max_length or the validation options and it misses.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rlhf_rm.batching.arrow import groups_to_table, table_to_groups
from rlhf_rm.data.readers import expand_paths

CACHE_VERSION = 3  # 2: OASST splits by tree id; 3: response_lengths stored. Bump when the stored layout or the encoding logic changes
_META = b"rlhf_rm"


def cache_dir() -> Path:
    root = os.environ.get("RLHF_RM_CACHE") or Path.home() / ".cache" / "rlhf_rm"
    return Path(root) / "tokenized"


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_digest(pattern: str | Path) -> str | None:
    """Digest of every file a source names (a file, a directory or a glob); None if it names none
    (the loader then reports that, with the path)."""
    try:
        paths = expand_paths(pattern)
    except ValueError:
        return None
    if len(paths) == 1:
        return file_digest(paths[0])
    return hashlib.sha256(json.dumps([[str(p), file_digest(p)] for p in paths]).encode()).hexdigest()


def encoder_fingerprint(encoder) -> dict:
    """What the token ids depend on besides the data: the tokenizer (name, vocabulary, chat template)
    and the encoder's length and truncation settings."""
    tokenizer = encoder.tokenizer
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": hashlib.sha256(vocab.encode("utf-8")).hexdigest(),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special_tokens": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id},
        "rendering": encoder.spec.to_dict(),
    }


def cache_key(payload: dict) -> str:
    text = json.dumps({"version": CACHE_VERSION, **payload}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save(key: str, groups: list, content_keys: list[str], metadata: dict, quarantine_files: dict[str, str]) -> Path:
    """Write atomically (temp file + rename), so a killed run never leaves a half entry behind."""
    import pyarrow as pa

    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    table = groups_to_table(groups).append_column("content_key", pa.array(content_keys, pa.string()))
    stored_quarantine = {}
    for name, source in quarantine_files.items():
        target = directory / f"{key}.{_safe(name)}.quarantine.jsonl"
        _atomic_copy(Path(source), target)
        stored_quarantine[name] = target.name
    table = table.replace_schema_metadata({_META: json.dumps({**metadata, "quarantine": stored_quarantine})})
    path = directory / f"{key}.arrow"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    return path


def load(key: str, quarantine_dir: Path):
    """(groups, content_keys, metadata) of a stored entry, or None; its quarantine files are copied
    into `quarantine_dir` and metadata["quarantine"] maps source name -> that copy."""
    import pyarrow as pa

    directory = cache_dir()
    path = directory / f"{key}.arrow"
    if not path.exists():
        return None
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        metadata = json.loads(table.schema.metadata[_META])
    except (pa.ArrowException, OSError, KeyError, ValueError):
        return None  # unreadable entry (e.g. disk trouble): rebuild it
    groups = table_to_groups(table)
    copies = {}
    for name, stored in metadata.get("quarantine", {}).items():
        target = Path(quarantine_dir) / metadata["quarantine_names"][name]
        _atomic_copy(directory / stored, target)
        copies[name] = str(target)
    metadata["quarantine"] = copies
    return groups, table.column("content_key").to_pylist(), metadata


def _atomic_copy(source: Path, target: Path) -> None:
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
