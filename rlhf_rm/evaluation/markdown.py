"""report.md: the evaluation report rendered for people (report.json holds every number)."""

from __future__ import annotations

from pathlib import Path

from rlhf_rm.evaluation.plots import PLOTS, bucket_label, fmt
from rlhf_rm.evaluation.rewardbench import rewardbench_markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _source_table(by_source: dict) -> list[str]:
    """Accuracy per data source beside its own length-only baseline (issue 29) and the chosen shorter / longer split."""
    return [
        "| source | pairs | accuracy | length-only baseline | margin over it | chosen shorter (pairs) "
        "| chosen longer (pairs) |",
        "|---|---|---|---|---|---|---|",
        *[f"| `{source}` | {row['pairs']} | {fmt(row['accuracy'])} | {fmt(row['length_baseline'])} "
          f"({row['length_baseline_rule']}) | {_signed(row['margin_over_length_baseline'])} "
          f"| {fmt(row['shorter_chosen_accuracy'])} ({row['shorter_chosen_pairs']}) "
          f"| {fmt(row['longer_chosen_accuracy'])} ({row['longer_chosen_pairs']}) |"
          for source, row in by_source.items()],
        "",
        "The length-only baseline is the better of \"the shorter reply wins\" and \"the longer reply wins\" on the "
        "same pairs (response tokens as scored, after truncation; equal lengths count as half right); a reward "
        "that only counts tokens reaches it without learning anything else.",
        "",
    ]


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
        f"| accuracy | {fmt(rewards['accuracy'])} |",
        f"| length-only baseline ({length['length_baseline_rule']}; equal lengths count half) "
        f"| {fmt(length['length_baseline'])} |",
        f"| margin over the length-only baseline | {_signed(length['margin_over_length_baseline'])} |",
        f"| mean margin | {fmt(rewards['mean_margin'])} |",
        f"| expected calibration error | {fmt(calib['ece'])} |",
        f"| reward–length Pearson r | {fmt(length['reward_length_correlation'])} |",
        f"| accuracy, chosen is shorter ({length['shorter_chosen_pairs']} pairs) "
        f"| {fmt(length['shorter_chosen_accuracy'])} |",
        f"| accuracy, chosen is longer ({length['longer_chosen_pairs']} pairs) "
        f"| {fmt(length['longer_chosen_accuracy'])} |",
        f"| chosen reward mean ± std | {fmt(rewards['chosen_mean'])} ± {fmt(rewards['chosen_std'])} |",
        f"| rejected reward mean ± std | {fmt(rewards['rejected_mean'])} ± {fmt(rewards['rejected_std'])} |",
        "",
        "## Accuracy per data source",
        "",
        *_source_table(report["by_source"]),
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
        *[f"| {b['low']:.1f}–{b['high']:.1f} | {b['count']} | {fmt(b['mean_predicted'])} "
          f"| {fmt(b['observed_frequency'])} |" for b in calib["bins"]],
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
        *[f"| {bucket_label(b)} | {b['pairs']} | {fmt(b['accuracy'])} |" for b in length["by_length_bucket"]],
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
