"""A prepared split's accounting: the per-source DataReports added up into one summary, and its start-up lines.

Built by `split_summary` only, for in-memory, cached and streamed splits alike, so every summary has the
same keys: the SUMMARY_COUNTS, quarantined_by_reason, prompt/response truncation, `sources` (each
source's DataReport.as_dict()), `groups` and `cache`; an in-memory train split adds `length_balance` (None when
off; prepare/length_balance.py), applied after the cache like source weights.
"""

from __future__ import annotations

from rlhf_rm.data.load import DataReport
from rlhf_rm.prepare.length_balance import format_length_balance

SUMMARY_COUNTS = ("rows_read", "used", "examples", "other_split", "without_comparison", "deduplicated",
                  "duplicate_examples", "dev_overlap", "dropped_dev_overlap", "ties", "chat_examples", "quarantined")


def split_summary(reports: dict[str, DataReport], prompt_truncated: int, response_truncated: int,
                  groups: int | None = None) -> dict:
    """Sum the sources' reports; `groups` defaults to the examples kept (weights may repeat some)."""
    total = DataReport()
    for report in reports.values():
        total.add(report)
    counts = total.as_dict()
    summary = {key: counts[key] for key in SUMMARY_COUNTS}
    summary["quarantined_by_reason"] = counts["quarantined_by_reason"]
    summary["prompt_truncated"] = prompt_truncated
    summary["response_truncated"] = response_truncated
    summary["sources"] = {name: report.as_dict() for name, report in reports.items()}
    summary["groups"] = summary["examples"] if groups is None else groups
    summary["cache"] = {"hit": False, "path": None}
    return summary


def format_data_summary(split: str, summary: dict) -> str:
    """Start-up lines: where every row went (rows read = used + quarantined + deduplicated + dropped as dev
    overlap + other split + without comparison), truncation, overlap with dev and the cache."""
    line = (f"data[{split}]: {summary['rows_read']} rows read, {summary['used']} used → {summary['examples']} examples"
            f" → {summary['groups']} groups; {summary['quarantined']} quarantined, "
            f"{summary['deduplicated']} deduplicated")
    for key, label in (("dropped_dev_overlap", "dropped as dev overlap"), ("other_split", "in the other split"),
                       ("without_comparison", "without a comparison")):
        if summary[key]:
            line += f", {summary[key]} {label}"
    line += (f"\n  truncated: {summary['prompt_truncated']} prompts, {summary['response_truncated']} responses"
             f" (no example is dropped for length)")
    if summary["duplicate_examples"]:
        line += f"; {summary['duplicate_examples']} repeated examples removed"
    if summary["ties"]:
        line += f"; {summary['ties']} ties"
    if summary["dev_overlap"]:
        action = "removed" if summary["dropped_dev_overlap"] else "kept; data.drop_dev_overlap=true removes them"
        line += f"\n  dev overlap: {summary['dev_overlap']} train examples also appear in dev ({action})"
    if summary["quarantined"]:
        line += f"\n  quarantined by reason: {summary['quarantined_by_reason']}"
        for name, report in summary["sources"].items():
            if report["quarantined"]:
                line += f"\n    {name}: {report['quarantined_by_reason']} → {report['quarantine_file']}"
    if summary.get("length_balance"):
        line += "\n" + format_length_balance(summary["length_balance"])
    cache = summary["cache"]
    if cache["path"]:
        line += f"\n  tokenized cache: {'hit' if cache['hit'] else 'written'} {cache['path']}"
    return line
