"""Data preparation for training: read → validate → deduplicate → encode → cache, one split at a time.

Everything between the files and the trainer: `prepare_splits` turns the data settings into two
`PreparedSplit`s (train and dev) that hold the encoded groups (or, with data.streaming=true, the Ray Data
shards), the split's accounting summary and its quarantine files. The train split is checked against
dev for overlapping examples; encoded splits are cached (prepare/token_cache.py).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import to_absolute_path

from rlhf_rm.batching.tokenize import EncodedGroup, ResponseEncoder
from rlhf_rm.checkpoint.rendering import RenderingSpec
from rlhf_rm.config import DataConfig
from rlhf_rm.data.load import content_key, load_examples, normalize_source
from rlhf_rm.prepare import token_cache
from rlhf_rm.prepare.length_balance import balance_by_length
from rlhf_rm.prepare.streaming import prepare_streamed_split
from rlhf_rm.prepare.summary import split_summary


@dataclass
class PreparedSplit:
    """One split, ready for training: groups in memory, or the shards of a streamed split."""

    name: str  # "train" | "dev"
    summary: dict  # prepare/summary.py: where every row went, truncation, cache
    groups: list[EncodedGroup] | None = None  # None for a streamed split
    streamed: object | None = None  # prepare.streaming.StreamedSplit when data.streaming=true
    kinds: set = field(default_factory=set)  # group kinds present: {"pair", "ranking"}
    labels: set = field(default_factory=set)  # labels every pair carries, e.g. {"margin"}

    @property
    def count(self) -> int:
        """Groups an epoch sees (after source weights and length balancing)."""
        return len(self.groups) if self.groups is not None else self.summary["groups"]

    @property
    def quarantine_files(self) -> dict[str, str]:
        """Source name → the quarantine file of its bad rows (only sources that had some)."""
        return {name: report["quarantine_file"] for name, report in self.summary["sources"].items()
                if report.get("quarantine_file")}


def build_encoder(tokenizer, data: DataConfig) -> ResponseEncoder:
    """The one place the data settings become an encoder (training, the cache key, streamed shards)."""
    return ResponseEncoder(tokenizer, spec=RenderingSpec.for_tokenizer(tokenizer, data.max_length, data.append_eos))


def prepare_splits(data: DataConfig, encoder: ResponseEncoder, run_dir: Path, seed: int,
                   backbone_path: str | None = None, workers: int = 1) -> tuple[PreparedSplit, PreparedSplit]:
    """(train, dev); streamed train splits need the backbone path (actors load the tokenizer themselves)."""
    if data.streaming:
        train = prepare_streamed_train(data, encoder, backbone_path, run_dir, workers)
    else:
        train = prepare_split(data, encoder, run_dir, "train", seed)
    return train, prepare_split(data, encoder, run_dir, "dev", seed)


def prepare_split(data: DataConfig, encoder: ResponseEncoder, run_dir: Path, split: str, seed: int = 0
                  ) -> PreparedSplit:
    """Read, validate, deduplicate and encode one split (data.train or data.dev); source weights and length
    balancing apply to the train split after the cache."""
    dev_keys = dev_content_keys(data, encoder, run_dir) if split == "train" else None
    specs = source_specs(data.train if split == "train" else data.dev)
    limit = data.limit if split == "train" else data.dev_limit
    unique, _, summary = _encoded_split(specs, data, encoder, run_dir, split, limit, dev_keys)
    groups, start = [], 0
    for spec in specs:  # groups are stored source by source; weights apply after the cache
        count = summary["sources"][spec["name"]]["examples"]
        encoded = unique[start:start + count]
        start += count
        groups.extend(apply_weight(encoded, spec["weight"], seed) if split == "train" else encoded)
    if split == "train":
        groups, summary["length_balance"] = balance_by_length(groups, data.length_balance.mode,
                                                              data.length_balance.bin_tokens, seed)
    summary["groups"] = len(groups)
    kinds, labels = data_shapes(groups)
    return PreparedSplit(split, summary, groups=groups, kinds=kinds, labels=labels)


def prepare_streamed_train(data: DataConfig, encoder: ResponseEncoder, backbone_path: str, run_dir: Path,
                           workers: int) -> PreparedSplit:
    """data.streaming=true: the train split prepared into shards by Ray Data (see prepare/streaming.py)."""
    dev_keys = dev_content_keys(data, encoder, run_dir)
    specs = source_specs(data.train)
    key = split_cache_key(specs, load_options(data, None, dev_keys), encoder, "train", dev_keys,
                          streaming={"rows_per_unit": data.rows_per_unit})
    entry = token_cache.cache_dir() / f"stream-{key}" if data.cache else run_dir / "stream"
    streamed = prepare_streamed_split(specs, data, encoder.spec.to_dict(), backbone_path, run_dir, entry, dev_keys,
                                      workers, data.cache)
    return PreparedSplit("train", streamed.summary, streamed=streamed, kinds=streamed.kinds, labels=streamed.labels)


def source_specs(entries) -> list[dict]:
    """data.train / data.dev: one path, or a list of paths or {path, format, weight, split, ...}."""
    if entries is None:
        return []
    if isinstance(entries, (str, dict, Path)):
        entries = [entries]
    specs = []
    for entry in entries:
        spec = normalize_source(entry)
        spec["path"] = to_absolute_path(spec["path"])
        specs.append(spec)
    return unique_source_names(specs, [isinstance(e, dict) and "name" in e for e in entries])


def unique_source_names(specs: list[dict], explicit: list[bool]) -> list[dict]:
    """Summaries, quarantine files and the per-source slices of the groups are keyed by name, so two
    sources sharing one would overwrite each other's counts. A default name (the parent directory) that
    repeats becomes parent_stem; a name given twice, or still repeating, is a configuration error."""
    counts = Counter(spec["name"] for spec in specs)
    for spec, given in zip(specs, explicit):
        if counts[spec["name"]] > 1 and not given:
            path = Path(spec["path"])
            spec["name"] = f"{path.parent.name}_{path.name.split('.')[0]}" if path.parent.name else path.name
    repeated = [name for name, count in Counter(spec["name"] for spec in specs).items() if count > 1]
    if repeated:
        paths = [spec["path"] for spec in specs if spec["name"] == repeated[0]]
        raise ValueError(f"data sources {paths} have the same name {repeated[0]!r}: give each a distinct 'name'")
    return specs


def dev_content_keys(data: DataConfig, encoder: ResponseEncoder, run_dir: Path) -> frozenset | None:
    """Content keys of the dev split, for the train/dev overlap check. The dev split goes through the same
    cache, so its own prepare_split call afterwards is a hit."""
    if not data.dev:
        return None
    _, dev_content, _ = _encoded_split(source_specs(data.dev), data, encoder, run_dir, "dev", data.dev_limit)
    return frozenset(dev_content)


def load_options(data: DataConfig, limit: int | None, dev_keys) -> dict:
    """load_examples' options from the data settings (also part of the cache key)."""
    return {"on_error": data.on_error, "limit": limit, "prompt_separator": data.prompt_separator,
            "max_row_bytes": data.max_row_bytes, "dedupe": data.dedupe,
            "drop_dev_overlap": data.drop_dev_overlap and dev_keys is not None}


def split_cache_key(specs, options: dict, encoder, split: str, dev_keys, **extra) -> str:
    """Everything a prepared split depends on: the files' bytes, the options, the tokenizer and encoder."""
    return token_cache.cache_key({
        "split": split, "options": options, "encoder": token_cache.encoder_fingerprint(encoder),
        "sources": [{**{k: v for k, v in spec.items() if k != "weight"},
                     "sha256": token_cache.source_digest(spec["path"])} for spec in specs],
        "dev_keys": token_cache.cache_key({"keys": sorted(dev_keys)}) if dev_keys else None, **extra})


def _encoded_split(specs, data: DataConfig, encoder: ResponseEncoder, run_dir: Path, split: str, limit,
                   dev_keys=None):
    """(encoded groups before weighting, their content keys, summary), from the cache when it has them."""
    options = load_options(data, limit, dev_keys)
    quarantine_names = {spec["name"]: f"quarantine_{split}_{spec['name']}.jsonl" for spec in specs}
    key = split_cache_key(specs, options, encoder, split, dev_keys) if data.cache else None
    hit = token_cache.load(key, run_dir) if key is not None else None
    if hit is not None:
        groups, content, stored = hit
        summary = stored["summary"]
        for name, copy in stored["quarantine"].items():
            summary["sources"][name]["quarantine_file"] = copy
        summary["cache"] = {"hit": True, "path": str(token_cache.cache_dir() / f"{key}.arrow")}
        return groups, content, summary

    seen: set = set()  # shared by the split's sources: a pair repeated across sources is kept once
    groups, content, reports = [], [], {}
    for spec in specs:
        tagged, report = load_examples([spec], quarantine_path=run_dir / quarantine_names[spec["name"]],
                                       seen=seen, dev_keys=dev_keys, **options)
        groups += [encoder.encode_example(example, source) for source, example in tagged]
        content += [content_key(example) for _, example in tagged]
        reports[spec["name"]] = report
    summary = split_summary(reports, sum(g.prompt_truncated for g in groups),
                            sum(g.response_truncated for g in groups))
    if key is not None:
        written = {name: r.quarantine_file for name, r in reports.items() if r.quarantine_file}
        path = token_cache.save(key, groups, content, {"summary": summary, "quarantine_names": quarantine_names},
                                written)
        summary["cache"] = {"hit": False, "path": str(path)}
    return groups, content, summary


def apply_weight(groups: list, weight: float, seed: int) -> list:
    """A source's weight scales how many of its examples an epoch sees: 2.0 repeats it twice,
    0.5 keeps a seeded half."""
    if weight == 1.0 or not groups:
        return groups
    count = int(round(weight * len(groups)))
    whole, remainder = divmod(count, len(groups))
    return groups * whole + random.Random(seed).sample(groups, remainder)


def data_shapes(groups) -> tuple[set, set]:
    """(kinds of groups present, labels every pair carries): what the loss check needs."""
    kinds = {g.kind for g in groups}
    labels = {"margin"} if groups and all(g.margin is not None for g in groups if g.kind == "pair") else set()
    return kinds, labels
