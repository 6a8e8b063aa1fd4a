"""Hydra entry point: config → validated, tokenized data → Ray Train TorchTrainer → HF checkpoint + metrics.

    python -m rlhf_rm.train trainer.num_workers=2 loss=regularized data.limit=256
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from rlhf_rm.backbone import resolve_backbone
from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.data.load import content_key, load_examples, normalize_source
from rlhf_rm.data.readers import DEFAULT_MAX_ROW_BYTES
from rlhf_rm.losses import build_loss, check_loss_fits_data
from rlhf_rm.metrics import headline
from rlhf_rm.model import load_tokenizer


def source_specs(entries) -> list[dict]:
    """data.train / data.dev: one path, or a list of paths or {path, format, weight, split, ...}."""
    if entries is None:
        return []
    if isinstance(entries, (str, DictConfig)) or not hasattr(entries, "__iter__"):
        entries = [entries]
    specs = []
    for entry in entries:
        entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else entry
        spec = normalize_source(entry)
        spec["path"] = to_absolute_path(spec["path"])
        specs.append(spec)
    return specs


def prepare_split(entries, data_cfg, encoder: ResponseEncoder, run_dir: Path, split: str, limit, seed: int):
    """Read, validate, deduplicate and encode one split → (groups, summary). Encoded groups are cached
    (data.cache); the train split is also checked against dev for overlapping examples."""
    dev_keys = _dev_keys(data_cfg, encoder, run_dir) if split == "train" else None
    specs = source_specs(entries)
    unique, _, summary = _encoded_split(specs, data_cfg, encoder, run_dir, split, limit, dev_keys)
    groups, start = [], 0
    for spec in specs:  # groups are stored source by source; weights apply after the cache
        count = summary["sources"][spec["name"]]["examples"]
        encoded = unique[start:start + count]
        start += count
        groups.extend(apply_weight(encoded, spec["weight"], seed) if split == "train" else encoded)
    summary["groups"] = len(groups)
    return groups, summary


SUMMARY_COUNTS = ("rows_read", "used", "examples", "other_split", "without_comparison", "deduplicated",
                  "duplicate_examples", "dev_overlap", "dropped_dev_overlap", "ties", "quarantined")


def _encoded_split(specs, data_cfg, encoder: ResponseEncoder, run_dir: Path, split: str, limit, dev_keys=None):
    """(encoded groups before weighting, their content keys, summary), from the cache when it has them."""
    from rlhf_rm.data import token_cache

    options = _load_options(data_cfg, limit, dev_keys)
    quarantine_names = {spec["name"]: f"quarantine_{split}_{spec['name']}.jsonl" for spec in specs}
    key = None
    if data_cfg.get("cache", True):
        key = _split_cache_key(specs, options, encoder, split, dev_keys)
        hit = token_cache.load(key, run_dir)
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
        reports[spec["name"]] = report.as_dict()
    summary = {key_: sum(r[key_] for r in reports.values()) for key_ in SUMMARY_COUNTS}
    by_reason = Counter()
    for report in reports.values():
        by_reason.update(report["quarantined_by_reason"])
    summary["quarantined_by_reason"] = dict(by_reason)
    summary["prompt_truncated"] = sum(g.prompt_truncated for g in groups)
    summary["response_truncated"] = sum(g.response_truncated for g in groups)
    summary["sources"] = reports
    summary["cache"] = {"hit": False, "path": None}
    if key is not None:
        written = {name: r["quarantine_file"] for name, r in reports.items() if r["quarantine_file"]}
        path = token_cache.save(key, groups, content, {"summary": summary, "quarantine_names": quarantine_names},
                                written)
        summary["cache"] = {"hit": False, "path": str(path)}
    return groups, content, summary


def _dev_keys(data_cfg, encoder: ResponseEncoder, run_dir: Path) -> frozenset | None:
    """Content keys of the dev split, for the train/dev overlap check. The dev split goes through the same
    cache, so its own prepare_split call afterwards is a hit."""
    if not data_cfg.get("dev"):
        return None
    _, dev_content, _ = _encoded_split(source_specs(data_cfg.dev), data_cfg, encoder, run_dir, "dev",
                                       data_cfg.get("dev_limit"))
    return frozenset(dev_content)


def _load_options(data_cfg, limit, dev_keys) -> dict:
    return {"on_error": data_cfg.on_error, "limit": limit, "prompt_separator": data_cfg.prompt_separator,
            "max_row_bytes": data_cfg.get("max_row_bytes") or DEFAULT_MAX_ROW_BYTES,
            "dedupe": bool(data_cfg.get("dedupe", True)),
            "drop_dev_overlap": bool(data_cfg.get("drop_dev_overlap", False)) and dev_keys is not None}


def _split_cache_key(specs, options: dict, encoder, split: str, dev_keys, **extra) -> str:
    """Everything a prepared split depends on: the files' bytes, the options, the tokenizer and encoder."""
    from rlhf_rm.data import token_cache

    return token_cache.cache_key({
        "split": split, "options": options, "encoder": token_cache.encoder_fingerprint(encoder),
        "sources": [{**{k: v for k, v in spec.items() if k != "weight"},
                     "sha256": token_cache.source_digest(spec["path"])} for spec in specs],
        "dev_keys": token_cache.cache_key({"keys": sorted(dev_keys)}) if dev_keys else None, **extra})


def prepare_streamed_train(data_cfg, encoder: ResponseEncoder, backbone_path: str, run_dir: Path, workers: int):
    """data.streaming=true: the train split prepared into shards by Ray Data (see data/streaming.py)."""
    from rlhf_rm.data import token_cache
    from rlhf_rm.data.streaming import prepare_streamed_split

    dev_keys = _dev_keys(data_cfg, encoder, run_dir)
    specs = source_specs(data_cfg.train)
    rows_per_unit = int(data_cfg.get("rows_per_unit") or 50_000)
    key = _split_cache_key(specs, _load_options(data_cfg, None, dev_keys), encoder, "train", dev_keys,
                           streaming={"rows_per_unit": rows_per_unit})
    reuse = bool(data_cfg.get("cache", True))
    entry = token_cache.cache_dir() / f"stream-{key}" if reuse else run_dir / "stream"
    return prepare_streamed_split(specs, data_cfg, backbone_path, encoder, run_dir, entry, dev_keys, workers, reuse)


def apply_weight(groups: list, weight: float, seed: int) -> list:
    """A source's weight scales how many of its examples an epoch sees: 2.0 repeats it twice,
    0.5 keeps a seeded half."""
    import random

    if weight == 1.0 or not groups:
        return groups
    count = int(round(weight * len(groups)))
    whole, remainder = divmod(count, len(groups))
    return groups * whole + random.Random(seed).sample(groups, remainder)


def data_shapes(groups) -> tuple[set, set]:
    kinds = {g.kind for g in groups}
    labels = {"margin"} if groups and all(g.margin is not None for g in groups if g.kind == "pair") else set()
    return kinds, labels


def format_data_summary(split: str, summary: dict) -> str:
    """Start-up lines: where every row went (rows read = used + quarantined + deduplicated + dropped as dev
    overlap + other split + without comparison), truncation, overlap with dev and the cache."""
    line = (f"data[{split}]: {summary['rows_read']} rows read, {summary['used']} used → {summary['examples']} examples"
            f" → {summary['groups']} groups; {summary['quarantined']} quarantined, "
            f"{summary.get('deduplicated', 0)} deduplicated")
    for key, label in (("dropped_dev_overlap", "dropped as dev overlap"), ("other_split", "in the other split"),
                       ("without_comparison", "without a comparison")):
        if summary.get(key):
            line += f", {summary[key]} {label}"
    line += (f"\n  truncated: {summary['prompt_truncated']} prompts, {summary['response_truncated']} responses"
             f" (no example is dropped for length)")
    if summary.get("duplicate_examples"):
        line += f"; {summary['duplicate_examples']} repeated examples removed"
    if summary["ties"]:
        line += f"; {summary['ties']} ties"
    if summary.get("dev_overlap"):
        action = "removed" if summary.get("dropped_dev_overlap") else "kept; data.drop_dev_overlap=true removes them"
        line += f"\n  dev overlap: {summary['dev_overlap']} train examples also appear in dev ({action})"
    if summary["quarantined"]:
        line += f"\n  quarantined by reason: {summary.get('quarantined_by_reason', {})}"
        for name, report in summary["sources"].items():
            if report["quarantined"]:
                line += f"\n    {name}: {report['quarantined_by_reason']} → {report['quarantine_file']}"
    cache = summary.get("cache") or {}
    if cache.get("path"):
        line += f"\n  tokenized cache: {'hit' if cache['hit'] else 'written'} {cache['path']}"
    return line


def storage_location(path: str) -> str:
    """Ray Train's storage: a local path (made absolute) or a URI every node can reach (s3://, gs://)."""
    return path if "://" in path else str(Path(to_absolute_path(path)))


def run(cfg: DictConfig, run_dir: Path) -> dict:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rlhf_rm.trainer import train_loop_per_worker

    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    backbone_path = resolve_backbone(cfg.model.path)
    tokenizer = load_tokenizer(backbone_path)
    encoder = ResponseEncoder(tokenizer, max_length=cfg.data.max_length, append_eos=cfg.data.append_eos)
    loss = build_loss(OmegaConf.to_container(cfg.loss, resolve=True))
    streaming = bool(cfg.data.get("streaming", False))
    if streaming:  # the shards are prepared by Ray Data (otherwise Ray starts once the data is known good)
        _init_ray(cfg)
    datasets, stream = {}, None
    if streaming:
        streamed = prepare_streamed_train(cfg.data, encoder, backbone_path, run_dir,
                                          workers=max(1, int(ray.available_resources().get("CPU", 1))))
        train_summary, kinds, labels = streamed.summary, streamed.kinds, streamed.labels
        datasets["train"] = streamed.dataset(readers=max(2, int(cfg.trainer.num_workers)))
        stream = {"tokens": streamed.tokens, "groups": train_summary["groups"]}
        train_count = train_summary["groups"]
    else:
        train_groups, train_summary = prepare_split(cfg.data.train, cfg.data, encoder, run_dir, "train",
                                                    cfg.data.limit, cfg.seed)
        kinds, labels = data_shapes(train_groups)
        train_count = len(train_groups)
    dev_groups, dev_summary = prepare_split(cfg.data.dev, cfg.data, encoder, run_dir, "dev", cfg.data.dev_limit, cfg.seed)
    for split, summary in (("train", train_summary), ("dev", dev_summary)):
        print(format_data_summary(split, summary), flush=True)
    check_loss_fits_data(loss, kinds, labels, data_name="the training data")
    if cfg.trainer.num_workers > train_count or cfg.trainer.num_workers > len(dev_groups):
        raise ValueError(f"trainer.num_workers={cfg.trainer.num_workers} exceeds the number of train/dev pairs")

    resolved = OmegaConf.to_container(cfg, resolve=True)
    _init_ray(cfg)
    train_config = {
        "cfg": resolved,
        "backbone_path": backbone_path,
        "run_dir": str(run_dir),
        "train_ref": None if streaming else ray.put(train_groups),
        "stream": stream,
        "dev_ref": ray.put(dev_groups),
        "metadata": {"base_model": cfg.model.path, "loss": resolved["loss"], "data": resolved["data"],
                     "config": resolved, "data_summary": {"train": train_summary, "dev": dev_summary},
                     "max_length": cfg.data.max_length, "append_eos": cfg.data.append_eos},
    }
    callbacks = []
    if cfg.trainer.get("publish_to_serve"):
        from rlhf_rm.serve.publish import PublishCheckpointsToPool

        callbacks.append(PublishCheckpointsToPool(list(cfg.trainer.publish_to_serve)))
    use_gpu = bool(cfg.trainer.use_gpu)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_config,
        datasets=datasets or None,
        scaling_config=ScalingConfig(num_workers=cfg.trainer.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.trainer.cpus_per_worker,
                                                           **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=str(cfg.run_name), storage_path=storage_location(cfg.trainer.storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.trainer.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
                             callbacks=callbacks),
    )
    result = trainer.fit()
    checkpoint_dir = run_dir / "checkpoint"
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    with result.checkpoint.as_directory() as source:
        shutil.copytree(source, checkpoint_dir)
    metrics = dict(result.metrics)
    metrics["wall_seconds"] = time.perf_counter() - started
    metrics["checkpoint"] = str(checkpoint_dir)
    metrics["data"] = {"train": train_summary, "dev": dev_summary}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(f"dev: {headline(metrics, prefix='dev_')} on {len(dev_groups)} examples; "
          f"{metrics['train_pairs_per_s']:.2f} examples/s; wall {metrics['wall_seconds']:.0f}s", flush=True)
    print(f"checkpoint: {checkpoint_dir}\nmetrics:    {run_dir / 'metrics.json'}", flush=True)
    return metrics


def _init_ray(cfg: DictConfig) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.ray.address, log_to_driver=True,
                 **({"num_cpus": cfg.ray.num_cpus} if cfg.ray.num_cpus and not cfg.ray.address else {}))


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    # Ray workers inherit this; tokenizers' own thread pool would fight the workers for 2 cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
