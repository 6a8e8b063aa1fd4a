"""What a dev evaluation leaves behind on rank 0: diagnostics.json, W&B reward histograms and the table of
the worst-scored pairs, and the headline diagnostics merged into the dev metrics."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_rm.evaluation.metrics import hard_pairs


def record_diagnostics(groups, scores: list, run_dir: str, tracker, step: int, tokenizer) -> dict:
    """Write diagnostics.json for the dev pairs with a preferred side (at least two of them) and log the
    W&B tables; returns the diagnostics' headline numbers for the dev metrics (empty without pairs)."""
    pairs = hard_pairs(groups, scores)
    if len(pairs.chosen) < 2:
        return {}
    diagnostics = pairs.diagnose()
    if tracker:
        decode = tokenizer if tracker.log_texts else None  # logger.log_texts=false: scores only, no text
        tracker.log_evaluation(step, pairs.chosen, pairs.rejected, [
            worst_pair_row(row, groups[int(row["id"])], decode) for row in diagnostics["worst_pairs"]])
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    Path(run_dir, "diagnostics.json").write_text(json.dumps(diagnostics, indent=2, default=str))
    return {**length_metrics(diagnostics), "ece": diagnostics["calibration"].get("ece")}


def length_metrics(diagnostics: dict) -> dict:
    """Reward–length correlation, accuracy where the chosen response is shorter / longer (issue 16: every
    report splits them) and the length-only baseline with the margin over it (issue 29), overall and, with
    several dev sources, per source."""
    length = diagnostics["length"]
    metrics = {"length_reward_correlation": length["reward_length_correlation"]}
    rows = {"": length}
    if len(diagnostics.get("by_source", {})) > 1:
        rows.update({f"/{source}": row for source, row in diagnostics["by_source"].items()})
    for suffix, row in rows.items():
        metrics.update({f"accuracy_chosen_shorter{suffix}": row["shorter_chosen_accuracy"],
                        f"pairs_chosen_shorter{suffix}": row["shorter_chosen_pairs"],
                        f"accuracy_chosen_longer{suffix}": row["longer_chosen_accuracy"],
                        f"pairs_chosen_longer{suffix}": row["longer_chosen_pairs"],
                        # issue 29: the length-only baseline on the same pairs, its rule, the margin over it
                        f"length_baseline{suffix}": row["length_baseline"],
                        f"length_baseline_rule{suffix}": row["length_baseline_rule"],
                        f"margin_over_length_baseline{suffix}": row["margin_over_length_baseline"]})
    return metrics


def worst_pair_row(row: dict, group, tokenizer=None, prompt_tail_tokens: int = 48) -> list:
    """One row of the W&B table of worst-scored dev pairs (tracking.SCORE_COLUMNS), with the decoded texts
    (TEXT_COLUMNS) when a tokenizer is given; without one, no text at all."""
    scores = [int(row["id"]), row["margin"], row["chosen"], row["rejected"]]
    if tokenizer is None:
        return scores
    first, second = (0, 1) if group.probability > 0.5 else (1, 0)
    # Each reply's own tokens: where truncation cut a pair's prompt at two places, response_ids start with the
    # rest of the prompt, which belongs to the prompt column.
    cut = [len(ids) - n for ids, n in zip(group.response_ids, group.lengths())]
    prompt = group.prompt_ids + group.response_ids[first][:cut[first]]
    return [*scores, tokenizer.decode(prompt[-prompt_tail_tokens:]),
            tokenizer.decode(group.response_ids[first][cut[first]:]),
            tokenizer.decode(group.response_ids[second][cut[second]:])]


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"data": {"train": {"used": 3}}} → {"data/train/used": 3}, for W&B's flat summary keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat
