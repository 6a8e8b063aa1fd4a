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
from rlhf_rm.data.examples import RankedResponses
from rlhf_rm.data.load import normalize_source
from rlhf_rm.data.rewardbench import BENCHMARK_FORMATS, PROMPT_STYLES, detect_format
from rlhf_rm.data.sources import ranking_to_pairs
from rlhf_rm.diagnostics import diagnose
from rlhf_rm.rewardbench import BenchmarkItem, rewardbench_markdown, rewardbench_report, rewardbench_summary

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


class TextScores:
    """Every distinct (prompt, response) scored once: a RewardBench 2 row's responses appear in several of its
    pairs, and a benchmark's best-of-N and our pair report must read the same numbers."""

    def __init__(self, scorer, texts):
        self.index: dict[str, int] = {}
        unique = []
        for prompt, response in texts:
            key = _text_key(prompt, response)
            if key not in self.index:
                self.index[key] = len(unique)
                unique.append((prompt, response))
        encoded = [scorer.encode(prompt, response) for prompt, response in unique]
        self.scores = scorer.score_encoded(encoded) if encoded else []
        self.lengths = [e.lengths()[0] for e in encoded]
        self.truncated = [e.prompt_truncated or e.response_truncated for e in encoded]

    def position(self, prompt, response) -> int:
        return self.index[_text_key(prompt, response)]


def _text_key(prompt, response) -> str:
    return json.dumps([prompt, response], ensure_ascii=False)


def score_pairs(table: TextScores, pairs, sources: list[str]) -> ScoredPairs:
    chosen = [table.position(p.prompt, p.chosen) for p in pairs]
    rejected = [table.position(p.prompt, p.rejected) for p in pairs]
    return ScoredPairs(
        origins=[p.origin for p in pairs],
        sources=list(sources),
        chosen=[table.scores[i] for i in chosen], rejected=[table.scores[i] for i in rejected],
        chosen_lengths=[table.lengths[i] for i in chosen],
        rejected_lengths=[table.lengths[i] for i in rejected],
        truncated=sum(table.truncated[i] for i in chosen + rejected),
        prompts=[_plain(p.prompt) for p in pairs],
        chosen_texts=[_plain(p.chosen) for p in pairs],
        rejected_texts=[_plain(p.rejected) for p in pairs],
    )


def benchmark_items(table: TextScores, examples) -> list[BenchmarkItem]:
    """RewardBench rows (v1 pairs, v2 rankings with chosen at rank 0) with their responses' scores."""
    items = []
    for example in examples:
        if isinstance(example, RankedResponses):
            scores = [table.scores[table.position(example.prompt, r)] for r in example.responses]
            chosen = [s for s, rank in zip(scores, example.ranks) if rank == 0]
            rejected = [s for s, rank in zip(scores, example.ranks) if rank != 0]
        else:
            chosen = [table.scores[table.position(example.prompt, example.chosen)]]
            rejected = [table.scores[table.position(example.prompt, example.rejected)]]
        items.append(BenchmarkItem(example.subset, example.item_id, chosen, rejected))
    return items


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
        "| source | pairs | accuracy | chosen shorter (pairs) | chosen longer (pairs) |",
        "|---|---|---|---|---|",
        *[f"| `{source}` | {row['pairs']} | {_fmt(row['accuracy'])} | {_fmt(row['shorter_chosen_accuracy'])} "
          f"({row['shorter_chosen_pairs']}) | {_fmt(row['longer_chosen_accuracy'])} ({row['longer_chosen_pairs']}) |"
          for source, row in report["by_source"].items()],
        "",
        *(rewardbench_markdown(report["rewardbench"]) if report.get("rewardbench") else []),
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


def checkpoint_prompt_style(metadata: dict, requested: str) -> tuple[str, str]:
    """(chat | plain, why): how RewardBench prompts are written for this checkpoint. `auto` takes the rendering
    most of its training examples had (rlhf_rm.json's data summary counts chat examples); checkpoints from
    before that count guess from the training sources' formats (the OASST/QA-Feedback/CoNaLa readers give
    chat, plain preference files are HH-RLHF-style text)."""
    if requested not in ("auto", *PROMPT_STYLES):
        raise ValueError(f"prompt_style={requested!r}: choose one of {['auto', *PROMPT_STYLES]}")
    if requested != "auto":
        return requested, "prompt_style set"
    train = (metadata.get("data_summary") or {}).get("train") or {}
    if "chat_examples" in train:
        chat, total = train["chat_examples"], train.get("examples", 0)
        style = "chat" if total and chat * 2 >= total else "plain"
        return style, f"{chat} of {total} training examples were chat messages"
    sources = ((metadata.get("config") or {}).get("data") or {}).get("train")
    sources = sources if isinstance(sources, list) else [sources] if sources else []
    formats = {normalize_source(s)["format"] for s in sources}
    if formats - {"preference"}:
        return "chat", f"trained on {sorted(formats)} (no chat count in rlhf_rm.json)"
    return "plain", ("trained on preference files (no chat count in rlhf_rm.json); "
                     "set prompt_style=chat if they were chat")


def evaluate(cfg: DictConfig, report_dir: Path) -> dict:
    import torch

    from rlhf_rm.model import read_metadata
    from rlhf_rm.scoring import RewardScorer
    from rlhf_rm.storage import is_uri, materialize

    started = time.perf_counter()
    # A URI is checked, then downloaded once into this machine's cache; the report names the URI.
    source = cfg.checkpoint if is_uri(cfg.checkpoint) else os.path.normpath(to_absolute_path(cfg.checkpoint))
    checkpoint = materialize(source)
    report_dir.mkdir(parents=True, exist_ok=True)
    metadata = read_metadata(checkpoint)
    style, why = checkpoint_prompt_style(metadata, cfg.prompt_style)
    separator = ((metadata.get("config") or {}).get("data") or {}).get("prompt_separator")
    data = load_dev_pairs(cfg, report_dir, style, separator)
    if not data.pairs:
        raise ValueError(f"no usable pairs in data.dev={cfg.data.dev}")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # The checkpoint's rendering decides lengths and EOS; loading re-scores its parity canaries.
    scorer = RewardScorer(checkpoint, tokens_per_batch=cfg.tokens_per_batch, device=device, dtype=cfg.dtype)
    table = TextScores(scorer, [(p.prompt, r) for p in data.pairs for r in (p.chosen, p.rejected)])
    scored = score_pairs(table, data.pairs, data.labels)
    report = build_report(scored, source, list(data.summary["sources"]), data.summary, bins=cfg.report.bins,
                          worst_k=cfg.report.worst_k, length_edges=list(cfg.report.length_edges))
    if data.benchmarks:
        report["rewardbench"] = {
            label: {"format": bench["format"], "prompt_style": bench["prompt_style"], "prompt_style_reason": why,
                    **rewardbench_report(benchmark_items(table, bench["examples"]),
                                         version=2 if bench["format"] == "rewardbench2" else 1)}
            for label, bench in data.benchmarks.items()}
    report["seconds"] = time.perf_counter() - started
    markdown = write_report(report, scored, report_dir)
    print(summary_text(report), flush=True)
    print(f"report: {markdown}", flush=True)
    return report


def summary_text(report: dict) -> str:
    """The printed summary: headline numbers, the chosen shorter / longer split, per source, RewardBench."""
    rewards, length = report["rewards"], report["length"]
    lines = [f"accuracy {_fmt(rewards['accuracy'])} on {rewards['pairs']} pairs; "
             f"ECE {_fmt(report['calibration']['ece'])}; reward-length r {_fmt(length['reward_length_correlation'])}; {_length_split(length)}"]
    if len(report["by_source"]) > 1:
        lines += [f"  {source}: accuracy {_fmt(row['accuracy'])} on {row['pairs']} pairs; {_length_split(row)}"
                  for source, row in report["by_source"].items()]
    lines += [rewardbench_summary(label, bench) for label, bench in report.get("rewardbench", {}).items()]
    return "\n".join(lines)


def _length_split(row: dict) -> str:
    return (f"chosen shorter {_fmt(row['shorter_chosen_accuracy'])} ({row['shorter_chosen_pairs']} pairs), "
            f"chosen longer {_fmt(row['longer_chosen_accuracy'])} ({row['longer_chosen_pairs']} pairs)")


@hydra.main(config_path="pkg://rlhf_rm.conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


def checkpoint_argument_to_override(argv: list[str]) -> list[str]:
    """`evaluate CHECKPOINT k=v ...` → `evaluate checkpoint='CHECKPOINT' k=v ...` (Hydra takes only k=v). A URI
    is a checkpoint even with `=` in its query (s3://b/ckpt?endpoint_override=...): no override key has `://`."""
    if len(argv) > 1 and ("=" not in argv[1] or "://" in argv[1].split("=", 1)[0]) and not argv[1].startswith("-"):
        quoted = f"'{argv[1]}'" if "'" not in argv[1] else argv[1]
        return [argv[0], f"checkpoint={quoted}", *argv[2:]]
    return argv


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.argv = checkpoint_argument_to_override(sys.argv)
    main()
