"""What evaluation scores: data.dev sources (files, mixes, RewardBench) read into labelled pairs, and the
prompt style a checkpoint was trained with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from rlhf_rm.checkpoint.metadata import CheckpointMetadata
from rlhf_rm.data import load_pairs
from rlhf_rm.data.examples import RankedResponses
from rlhf_rm.data.load import normalize_source
from rlhf_rm.data.rewardbench import BENCHMARK_FORMATS, PROMPT_STYLES, detect_format
from rlhf_rm.data.sources import ranking_to_pairs


def dev_sources(entries, prompt_style: str = "chat") -> list[tuple[str, dict]]:
    """data.dev → (label, source spec): a path, or a mapping as in conf/data/mix.yaml. The label is the
    mapping's `name` when given, else the file path. Rankings are scored as all their ranked pairs.
    A source without a format whose first row has RewardBench's keys is read as RewardBench (v1 or v2);
    RewardBench sources keep their rows whole (best-of-N) and write prompts in `prompt_style` unless
    the source sets its own."""
    if isinstance(entries, (str, DictConfig)):
        entries = [entries]
    sources = []
    for entry in entries:
        entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else entry
        given = entry if isinstance(entry, dict) else {}
        spec = normalize_source(entry)
        spec["path"] = os.path.normpath(to_absolute_path(spec["path"]))
        if "format" not in given:
            spec["format"] = _sniff_format(spec["path"]) or spec["format"]
        if spec["format"] in BENCHMARK_FORMATS:
            spec["prompt_style"] = given.get("prompt_style", prompt_style)
            spec["as_pairs"] = None
        else:
            spec["as_pairs"] = spec["as_pairs"] or "all"
        label = entry["name"] if isinstance(entry, dict) and "name" in entry else spec["path"]
        sources.append((label, spec))
    return sources


def _sniff_format(path: str) -> str | None:
    try:
        return detect_format(path)
    except (ValueError, OSError):
        return None  # the loader reports a missing or unreadable file, with its path


@dataclass
class DevData:
    """What evaluate scores: pairs (every source, each pair labelled by its source) and the RewardBench rows."""

    pairs: list
    labels: list[str]
    summary: dict
    benchmarks: dict  # source label -> {"format", "prompt_style", "examples"}


def load_dev_pairs(cfg: DictConfig, report_dir: Path, prompt_style: str = "chat", separator: str | None = None
                   ) -> DevData:
    """Pairs with their source labels, ties (P = 0.5: no preferred side) left out and counted. A RewardBench 2
    row also gives its chosen × rejected pairs to the pair report. `separator`: the assistant turn of
    plain-text RewardBench prompts (the checkpoint's data.prompt_separator)."""
    data = DevData([], [], {"rows_read": 0, "used": 0, "quarantined": 0, "ties_skipped": 0, "sources": {}}, {})
    for label, spec in dev_sources(cfg.data.dev, prompt_style):
        if spec["format"] in BENCHMARK_FORMATS:
            spec.setdefault("prompt_separator", separator or cfg.data.prompt_separator)
        quarantine = report_dir / f"quarantine_{len(data.summary['sources'])}.jsonl"
        loaded, data_report = load_pairs([spec], on_error=cfg.data.on_error, limit=cfg.data.dev_limit,
                                         quarantine_path=quarantine, prompt_separator=cfg.data.prompt_separator)
        if spec["format"] in BENCHMARK_FORMATS:
            data.benchmarks[label] = {"format": spec["format"], "prompt_style": spec["prompt_style"],
                                      "examples": loaded}
            loaded = [pair for example in loaded for pair in (
                ranking_to_pairs(example, "all") if isinstance(example, RankedResponses) else [example])]
        kept = [p for p in loaded if getattr(p, "probability", 1.0) != 0.5]
        data.pairs += kept
        data.labels += [label] * len(kept)
        counts = data_report.as_dict()
        for key in ("rows_read", "used", "quarantined"):
            data.summary[key] += counts[key]
        data.summary["ties_skipped"] += len(loaded) - len(kept)
        data.summary["sources"][label] = counts
    return data


def checkpoint_prompt_style(metadata: CheckpointMetadata, requested: str) -> tuple[str, str]:
    """(chat | plain, why): how RewardBench prompts are written for this checkpoint. `auto` takes the rendering
    most of its training examples had (rlhf_rm.json's data summary counts chat examples); checkpoints from
    before that count guess from the training sources' formats (the OASST/QA-Feedback/CoNaLa readers give
    chat, plain preference files are HH-RLHF-style text)."""
    if requested not in ("auto", *PROMPT_STYLES):
        raise ValueError(f"prompt_style={requested!r}: choose one of {['auto', *PROMPT_STYLES]}")
    if requested != "auto":
        return requested, "prompt_style set"
    train = metadata.train_summary
    if "chat_examples" in train:
        chat, total = train["chat_examples"], train.get("examples", 0)
        style = "chat" if total and chat * 2 >= total else "plain"
        return style, f"{chat} of {total} training examples were chat messages"
    sources = metadata.train_sources
    sources = sources if isinstance(sources, list) else [sources] if sources else []
    formats = {normalize_source(s)["format"] for s in sources}
    if formats - {"preference"}:
        return "chat", f"trained on {sorted(formats)} (no chat count in rlhf_rm.json)"
    return "plain", ("trained on preference files (no chat count in rlhf_rm.json); "
                     "set prompt_style=chat if they were chat")
