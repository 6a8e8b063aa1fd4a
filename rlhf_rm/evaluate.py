"""Evaluation report for a checkpoint: accuracy per source, calibration, length bias, reward plots.

    python -m rlhf_rm.evaluate CHECKPOINT data.dev=../shared/data/hh-rlhf-harmless/dev.jsonl
    python -m rlhf_rm.evaluate CHECKPOINT 'data.dev=[a.jsonl,b.jsonl]' hydra.run.dir=reports/run1

data.dev takes what training takes: a path, or a list of paths or source mappings (conf/data/mix.yaml);
each source is one row of the per-source accuracy table.

Writes to the Hydra run dir (conf/evaluate.yaml): report.md (read this first), report.json (every
number), scores.jsonl (one line per pair), reliability.png, reward_histograms.png,
accuracy_by_length.png, reward_vs_length.png.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

import rlhf_rm.config  # noqa: F401  (registers the config schemas with Hydra)
from rlhf_rm.data import load_pairs
from rlhf_rm.data.load import normalize_source
from rlhf_rm.diagnostics import diagnose

PLOTS = {
    "reliability": "reliability.png",
    "histograms": "reward_histograms.png",
    "length_buckets": "accuracy_by_length.png",
    "reward_vs_length": "reward_vs_length.png",
}


@dataclass
class ScoredPairs:
    """Per-pair scores and response token lengths (after truncation: what the model saw)."""

    origins: list[str]
    sources: list[str]
    chosen: list[float]
    rejected: list[float]
    chosen_lengths: list[int]
    rejected_lengths: list[int]
    truncated: int
    prompts: list[str]
    chosen_texts: list[str]
    rejected_texts: list[str]


def score_pairs(scorer, pairs, sources: list[str]) -> ScoredPairs:
    encoded = []
    for pair in pairs:
        encoded += [scorer.encode(pair.prompt, pair.chosen), scorer.encode(pair.prompt, pair.rejected)]
    scores = scorer.score_encoded(encoded)
    return ScoredPairs(
        origins=[p.origin for p in pairs],
        sources=list(sources),
        chosen=scores[0::2], rejected=scores[1::2],
        chosen_lengths=[len(e.response_ids[0]) for e in encoded[0::2]],
        rejected_lengths=[len(e.response_ids[0]) for e in encoded[1::2]],
        truncated=sum(e.prompt_truncated or e.response_truncated for e in encoded),
        prompts=[_plain(p.prompt) for p in pairs],
        chosen_texts=[_plain(p.chosen) for p in pairs],
        rejected_texts=[_plain(p.rejected) for p in pairs],
    )


def _plain(text) -> str:
    """Chat-message lists flattened to "role: content" lines, for the report only."""
    if isinstance(text, str):
        return text
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in text)


# -- report ----------------------------------------------------------------------------------------

def build_report(scored: ScoredPairs, checkpoint: str, sources: list[str], data_summary: dict,
                 bins: int = 10, worst_k: int = 10, length_edges=(0, 32, 64, 128, 256, 512)) -> dict:
    diagnostics = diagnose(scored.chosen, scored.rejected, scored.chosen_lengths, scored.rejected_lengths,
                           sources=scored.sources, ids=scored.origins, k=worst_k, bins=bins,
                           length_edges=length_edges)
    for row in diagnostics["worst_pairs"]:
        i = row["index"]
        row["prompt_end"] = _snippet(scored.prompts[i], tail=True)
        row["chosen_text"] = _snippet(scored.chosen_texts[i])
        row["rejected_text"] = _snippet(scored.rejected_texts[i])
    return {"checkpoint": checkpoint, "sources": sources, "data": data_summary,
            "truncated_texts": scored.truncated, **diagnostics}


def _snippet(text: str, limit: int = 200, tail: bool = False) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return "…" + text[-limit:] if tail else text[:limit] + "…"


def write_report(report: dict, scored: ScoredPairs, directory: str | Path) -> Path:
    """Write report.json, scores.jsonl, the PNGs and report.md into `directory`; return report.md."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    with open(directory / "scores.jsonl", "w", encoding="utf-8") as f:
        for i, origin in enumerate(scored.origins):
            f.write(json.dumps({"origin": origin, "chosen": scored.chosen[i], "rejected": scored.rejected[i],
                                "chosen_length": scored.chosen_lengths[i],
                                "rejected_length": scored.rejected_lengths[i]}) + "\n")
    plot_report(report, scored, directory)
    path = directory / "report.md"
    path.write_text(render_markdown(report))
    return path


def plot_report(report: dict, scored: ScoredPairs, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    # Reliability diagram: observed preference frequency per bin of σ(r_a − r_b), against the diagonal.
    calib = report["calibration"]
    filled = [b for b in calib["bins"] if b["count"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = calib["bins"][0]["high"] - calib["bins"][0]["low"]
    top.bar([b["low"] for b in filled], [b["observed_frequency"] for b in filled], width=width, align="edge",
            edgecolor="black", alpha=0.7, label="observed frequency")
    top.plot([b["mean_predicted"] for b in filled], [b["observed_frequency"] for b in filled], "o",
             color="tab:red", label="(mean predicted, observed)")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("observed P(a preferred)")
    top.set_title(f"Reliability of σ(r_a − r_b): ECE = {calib['ece']:.3f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([b["low"] for b in calib["bins"]], [b["count"] for b in calib["bins"]], width=width,
               align="edge", edgecolor="black", color="tab:gray")
    bottom.set_xlabel("predicted σ(r_a − r_b) (each pair counted in both orders)")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["reliability"], dpi=110)
    plt.close(fig)

    # Reward histograms: chosen vs rejected on shared bins, and the margin.
    chosen, rejected = np.asarray(scored.chosen), np.asarray(scored.rejected)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=30)
    left.hist(chosen, bins=edges, alpha=0.6, label=f"chosen (mean {chosen.mean():.2f})", color="tab:green")
    left.hist(rejected, bins=edges, alpha=0.6, label=f"rejected (mean {rejected.mean():.2f})", color="tab:red")
    left.set_xlabel("reward")
    left.set_ylabel("responses")
    left.set_title("Rewards: chosen vs rejected")
    left.legend(fontsize=8)
    margin = chosen - rejected
    right.hist(margin, bins=30, color="tab:blue", alpha=0.8)
    right.axvline(0, color="black", linestyle="--")
    right.set_xlabel("margin r_chosen − r_rejected")
    right.set_title(f"Margins: accuracy {float((margin > 0).mean()):.3f}")
    fig.tight_layout()
    fig.savefig(directory / PLOTS["histograms"], dpi=110)
    plt.close(fig)

    # Accuracy per length bucket, pair counts on the bars.
    buckets = report["length"]["by_length_bucket"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [_bucket_label(b) for b in buckets]
    bars = ax.bar(labels, [b["accuracy"] for b in buckets], color="tab:purple", alpha=0.8)
    for bar, bucket in zip(bars, buckets):
        ax.annotate(f"n={bucket['pairs']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(0.5, color="gray", linestyle="--")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("longer response in the pair (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by response length")
    fig.tight_layout()
    fig.savefig(directory / PLOTS["length_buckets"], dpi=110)
    plt.close(fig)

    # Reward against response length: a rising cloud means the reward is (partly) a length counter.
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(scored.chosen_lengths, chosen, s=8, alpha=0.5, label="chosen", color="tab:green")
    ax.scatter(scored.rejected_lengths, rejected, s=8, alpha=0.5, label="rejected", color="tab:red")
    r = report["length"]["reward_length_correlation"]
    ax.set_title(f"Reward vs response length (Pearson r = {_fmt(r)})")
    ax.set_xlabel("response tokens")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["reward_vs_length"], dpi=110)
    plt.close(fig)


def _bucket_label(bucket: dict) -> str:
    return f"{bucket['low']}–{bucket['high']}" if bucket["high"] is not None else f"≥{bucket['low']}"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    rewards, calib, length = report["rewards"], report["calibration"], report["length"]
    lines = [
        "# Reward model evaluation",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- data: {', '.join(f'`{f}`' for f in report['sources'])}",
        f"- pairs: {rewards['pairs']} used of {report['data'].get('rows_read', rewards['pairs'])} rows read "
        f"({report['data'].get('quarantined', 0)} quarantined, {report['data'].get('ties_skipped', 0)} tied pairs "
        f"left out); {report['truncated_texts']} texts truncated",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {_fmt(rewards['accuracy'])} |",
        f"| mean margin | {_fmt(rewards['mean_margin'])} |",
        f"| expected calibration error | {_fmt(calib['ece'])} |",
        f"| reward–length Pearson r | {_fmt(length['reward_length_correlation'])} |",
        f"| accuracy, chosen is shorter ({length['shorter_chosen_pairs']} pairs) "
        f"| {_fmt(length['shorter_chosen_accuracy'])} |",
        f"| accuracy, chosen is longer ({length['longer_chosen_pairs']} pairs) "
        f"| {_fmt(length['longer_chosen_accuracy'])} |",
        f"| chosen reward mean ± std | {_fmt(rewards['chosen_mean'])} ± {_fmt(rewards['chosen_std'])} |",
        f"| rejected reward mean ± std | {_fmt(rewards['rejected_mean'])} ± {_fmt(rewards['rejected_std'])} |",
        "",
        "## Accuracy per data source",
        "",
        "| source | pairs | accuracy |",
        "|---|---|---|",
        *[f"| `{source}` | {row['pairs']} | {_fmt(row['accuracy'])} |" for source, row in report["by_source"].items()],
        "",
        "## Calibration",
        "",
        "P(a preferred over b) = σ(r_a − r_b), each pair counted in both orders; ECE is the count-weighted "
        "gap between mean predicted probability and observed frequency per bin.",
        "",
        f"![reliability diagram]({PLOTS['reliability']})",
        "",
        "| predicted | count | mean predicted | observed |",
        "|---|---|---|---|",
        *[f"| {b['low']:.1f}–{b['high']:.1f} | {b['count']} | {_fmt(b['mean_predicted'])} "
          f"| {_fmt(b['observed_frequency'])} |" for b in calib["bins"]],
        "",
        "## Rewards",
        "",
        f"![reward histograms]({PLOTS['histograms']})",
        "",
        "## Length bias",
        "",
        "A reward that counts tokens shows a high reward–length correlation and fails on pairs whose "
        "chosen response is the shorter one.",
        "",
        f"![accuracy by length]({PLOTS['length_buckets']})",
        f"![reward vs length]({PLOTS['reward_vs_length']})",
        "",
        "| longer response (tokens) | pairs | accuracy |",
        "|---|---|---|",
        *[f"| {_bucket_label(b)} | {b['pairs']} | {_fmt(b['accuracy'])} |" for b in length["by_length_bucket"]],
        "",
        f"## The {len(report['worst_pairs'])} most wrong pairs (lowest margin)",
        "",
        "| origin | margin | chosen (tokens) | rejected (tokens) | end of prompt | chosen | rejected |",
        "|---|---|---|---|---|---|---|",
        *[f"| `{Path(row['id']).name}` | {row['margin']:.3f} | {row['chosen']:.3f} ({row['chosen_length']}) "
          f"| {row['rejected']:.3f} ({row['rejected_length']}) | {_cell(row['prompt_end'])} "
          f"| {_cell(row['chosen_text'])} | {_cell(row['rejected_text'])} |" for row in report["worst_pairs"]],
        "",
    ]
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------

def dev_sources(entries) -> list[tuple[str, dict]]:
    """data.dev → (label, source spec): a path, or a mapping as in conf/data/mix.yaml. The label is the
    mapping's `name` when given, else the file path. Rankings are scored as all their ranked pairs."""
    if isinstance(entries, (str, DictConfig)):
        entries = [entries]
    sources = []
    for entry in entries:
        entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else entry
        spec = normalize_source(entry)
        spec["path"] = os.path.normpath(to_absolute_path(spec["path"]))
        spec["as_pairs"] = spec["as_pairs"] or "all"
        label = entry["name"] if isinstance(entry, dict) and "name" in entry else spec["path"]
        sources.append((label, spec))
    return sources


def load_dev_pairs(cfg: DictConfig, report_dir: Path) -> tuple[list, list[str], dict]:
    """Pairs with their source labels, ties (P = 0.5: no preferred side) left out and counted."""
    pairs, labels, summary = [], [], {"rows_read": 0, "used": 0, "quarantined": 0, "ties_skipped": 0, "sources": {}}
    for label, spec in dev_sources(cfg.data.dev):
        loaded, data_report = load_pairs([spec], on_error=cfg.data.on_error, limit=cfg.data.dev_limit,
                                         quarantine_path=report_dir / f"quarantine_{len(summary['sources'])}.jsonl",
                                         prompt_separator=cfg.data.prompt_separator)
        kept = [p for p in loaded if getattr(p, "probability", 1.0) != 0.5]
        pairs += kept
        labels += [label] * len(kept)
        counts = data_report.as_dict()
        for key in ("rows_read", "used", "quarantined"):
            summary[key] += counts[key]
        summary["ties_skipped"] += len(loaded) - len(kept)
        summary["sources"][label] = counts
    return pairs, labels, summary


def evaluate(cfg: DictConfig, report_dir: Path) -> dict:
    import torch

    from rlhf_rm.scoring import RewardScorer

    started = time.perf_counter()
    checkpoint = os.path.normpath(to_absolute_path(cfg.checkpoint))
    report_dir.mkdir(parents=True, exist_ok=True)
    pairs, labels, data_summary = load_dev_pairs(cfg, report_dir)
    if not pairs:
        raise ValueError(f"no usable pairs in data.dev={cfg.data.dev}")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # The checkpoint's rendering decides lengths and EOS; loading re-scores its parity canaries.
    scorer = RewardScorer(checkpoint, tokens_per_batch=cfg.tokens_per_batch, device=device, dtype=cfg.dtype)
    scored = score_pairs(scorer, pairs, labels)
    report = build_report(scored, checkpoint, list(data_summary["sources"]), data_summary, bins=cfg.report.bins,
                          worst_k=cfg.report.worst_k, length_edges=list(cfg.report.length_edges))
    report["seconds"] = time.perf_counter() - started
    markdown = write_report(report, scored, report_dir)
    rewards, length = report["rewards"], report["length"]
    print(f"accuracy {_fmt(rewards['accuracy'])} on {rewards['pairs']} pairs; ECE {_fmt(report['calibration']['ece'])}; "
          f"reward-length r {_fmt(length['reward_length_correlation'])}; shorter-chosen accuracy "
          f"{_fmt(length['shorter_chosen_accuracy'])} ({length['shorter_chosen_pairs']} pairs)", flush=True)
    print(f"report: {markdown}", flush=True)
    return report


@hydra.main(config_path="pkg://rlhf_rm.conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


def checkpoint_argument_to_override(argv: list[str]) -> list[str]:
    """`evaluate CHECKPOINT k=v ...` → `evaluate checkpoint='CHECKPOINT' k=v ...` (Hydra takes only k=v)."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        quoted = f"'{argv[1]}'" if "'" not in argv[1] else argv[1]
        return [argv[0], f"checkpoint={quoted}", *argv[2:]]
    return argv


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.argv = checkpoint_argument_to_override(sys.argv)
    main()
