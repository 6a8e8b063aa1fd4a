"""The evaluation report: numbers (report.json, scores.jsonl), figures, report.md and the printed summary."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_rm.evaluation.diagnostics import diagnose
from rlhf_rm.evaluation.markdown import render_markdown
from rlhf_rm.evaluation.pairs import ScoredPairs
from rlhf_rm.evaluation.plots import fmt, plot_report
from rlhf_rm.evaluation.rewardbench import rewardbench_summary


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


def summary_text(report: dict) -> str:
    """The printed summary: headline numbers with the length-only baseline, the chosen shorter / longer split,
    per source, RewardBench."""
    rewards, length = report["rewards"], report["length"]
    lines = [f"accuracy {fmt(rewards['accuracy'])} on {rewards['pairs']} pairs; {baseline_text(length)}; "
             f"ECE {fmt(report['calibration']['ece'])}; reward-length r {fmt(length['reward_length_correlation'])}; {_length_split(length)}"]
    if len(report["by_source"]) > 1:
        lines += [f"  {source}: accuracy {fmt(row['accuracy'])} on {row['pairs']} pairs; {baseline_text(row)}; "
                  f"{_length_split(row)}" for source, row in report["by_source"].items()]
    lines += [rewardbench_summary(label, bench) for label, bench in report.get("rewardbench", {}).items()]
    return "\n".join(lines)


def baseline_text(row: dict) -> str:
    """"length-only baseline 0.553 (shorter wins), margin -0.014" from a diagnostics row (diagnostics.length_split)."""
    margin = row.get("margin_over_length_baseline")
    return (f"length-only baseline {fmt(row.get('length_baseline'))} ({row.get('length_baseline_rule') or 'no pairs'}), "
            f"margin {'n/a' if margin is None else f'{margin:+.3f}'}")


def _length_split(row: dict) -> str:
    return (f"chosen shorter {fmt(row['shorter_chosen_accuracy'])} ({row['shorter_chosen_pairs']} pairs), "
            f"chosen longer {fmt(row['longer_chosen_accuracy'])} ({row['longer_chosen_pairs']} pairs)")
