"""Reward-quality diagnostics on scored preference pairs: calibration, length bias, worst pairs.

Pure functions of per-pair numbers (chosen/rejected rewards, response token lengths, source labels),
so the trainer's dev evaluation, `rlhf_rm.evaluate` and tests all compute them the same way; pair and
per-source accuracy are defined here once (`margin_accuracy`, `accuracy_by_source`) and rlhf_rm.evaluation.metrics
uses them too, and so is the length-only baseline every report prints beside them (`length_baseline`).
Every result is a JSON-ready dict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

# Response-length bucket edges in tokens: powers of two, fixed so reports from different runs line up.
DEFAULT_LENGTH_EDGES = (0, 32, 64, 128, 256, 512)


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence, got shape {array.shape}")
    return array


def _check_same_length(**arrays: np.ndarray) -> int:
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"one value per pair expected, got lengths {sizes}")
    return next(iter(sizes.values()))


def margin_accuracy(margin: np.ndarray) -> float | None:
    """Pair accuracy: the share of pairs whose chosen reward is strictly above the rejected one (a tie
    counts as wrong); None when there are no pairs. The one definition used by every metric and report."""
    margin = np.asarray(margin, dtype=np.float64)
    return float((margin > 0).mean()) if margin.size else None


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant (the correlation is undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else None


def calibration(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict:
    """Reliability of P(a preferred over b) = σ(r_a − r_b), with expected calibration error.

    Each pair is counted in both orders, (σ(r_c − r_r), preferred) and (σ(r_r − r_c), not preferred),
    so the diagram spans [0, 1] and is symmetric about 0.5; with only the chosen-first order every
    outcome would be 1. ECE = Σ_bins (n_bin / n) · |mean predicted − observed frequency|.
    """
    chosen, rejected = _as_array(chosen, "chosen"), _as_array(rejected, "rejected")
    _check_same_length(chosen=chosen, rejected=rejected)
    margin = chosen - rejected
    predicted = np.concatenate([_sigmoid(margin), _sigmoid(-margin)])
    observed = np.concatenate([np.ones_like(margin), np.zeros_like(margin)])
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed last bin so a probability of exactly 1.0 lands in it.
    index = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count == 0:
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": 0,
                         "mean_predicted": None, "observed_frequency": None})
            continue
        mean_predicted = float(predicted[members].mean())
        frequency = float(observed[members].mean())
        ece += count / predicted.size * abs(mean_predicted - frequency)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "mean_predicted": mean_predicted, "observed_frequency": frequency})
    return {"ece": float(ece) if predicted.size else None, "bins": rows}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows for large |margin|.
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp_x = np.exp(x[~positive])
    out[~positive] = exp_x / (1.0 + exp_x)
    return out


def length_bias(chosen: Sequence[float], rejected: Sequence[float], chosen_lengths: Sequence[int],
                rejected_lengths: Sequence[int], edges: Sequence[int] = DEFAULT_LENGTH_EDGES) -> dict:
    """How much the reward tracks response length instead of quality.

    - `reward_length_correlation`: Pearson r over every scored response (chosen and rejected pooled).
    - `shorter_chosen_accuracy`: accuracy on pairs whose chosen response is strictly shorter; a reward
      that prefers longer answers fails exactly there. `longer_chosen_accuracy` is the mirror case.
    - `by_length_bucket`: accuracy per bucket of the pair's longer response ([low, high) tokens).
    """
    chosen, rejected = _as_array(chosen, "chosen"), _as_array(rejected, "rejected")
    chosen_lengths = _as_array(chosen_lengths, "chosen_lengths")
    rejected_lengths = _as_array(rejected_lengths, "rejected_lengths")
    _check_same_length(chosen=chosen, rejected=rejected, chosen_lengths=chosen_lengths,
                       rejected_lengths=rejected_lengths)
    margin = chosen - rejected
    pair_length = np.maximum(chosen_lengths, rejected_lengths)
    bounds = [*edges, math.inf]
    buckets = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        members = (pair_length >= low) & (pair_length < high)
        if members.any():
            buckets.append({"low": int(low), "high": None if high == math.inf else int(high),
                            "pairs": int(members.sum()), "accuracy": margin_accuracy(margin[members])})
    return {
        "reward_length_correlation": pearson(np.concatenate([chosen, rejected]),
                                             np.concatenate([chosen_lengths, rejected_lengths])),
        **length_split(margin, chosen_lengths, rejected_lengths),
        "by_length_bucket": buckets,
    }


def reward_stats(chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    chosen, rejected = _as_array(chosen, "chosen"), _as_array(rejected, "rejected")
    margin = chosen - rejected
    return {
        "pairs": int(chosen.size),
        "accuracy": margin_accuracy(margin),
        "mean_margin": float(margin.mean()) if margin.size else None,
        "chosen_mean": float(chosen.mean()) if chosen.size else None,
        "chosen_std": float(chosen.std()) if chosen.size else None,
        "rejected_mean": float(rejected.mean()) if rejected.size else None,
        "rejected_std": float(rejected.std()) if rejected.size else None,
    }


def accuracy_by_source(chosen: Sequence[float], rejected: Sequence[float], sources: Sequence[str],
                       chosen_lengths: Sequence[int] | None = None, rejected_lengths: Sequence[int] | None = None
                       ) -> dict:
    """Accuracy and pair count per data source (e.g. the file each pair came from), in first-seen order; with
    the response lengths, also each source's accuracy where the chosen response is shorter / longer."""
    margin = _as_array(chosen, "chosen") - _as_array(rejected, "rejected")
    if len(sources) != margin.size:
        raise ValueError(f"{len(sources)} sources for {margin.size} pairs")
    members: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        members[source].append(i)
    rows = {source: {"pairs": len(indices), "accuracy": margin_accuracy(margin[indices])}
            for source, indices in members.items()}
    if chosen_lengths is not None and rejected_lengths is not None:
        chosen_lengths, rejected_lengths = np.asarray(chosen_lengths), np.asarray(rejected_lengths)
        for source, indices in members.items():
            rows[source].update(length_split(margin[indices], chosen_lengths[indices], rejected_lengths[indices]))
    return rows


def length_split(margin: np.ndarray, chosen_lengths: np.ndarray, rejected_lengths: np.ndarray) -> dict:
    """Accuracy on the pairs whose chosen response is strictly shorter, and strictly longer, than the rejected;
    and the length-only baseline on the same pairs with the model's margin over it (`length_baseline`)."""
    shorter, longer = chosen_lengths < rejected_lengths, chosen_lengths > rejected_lengths
    baseline = length_baseline(int(shorter.sum()), int(longer.sum()), int(margin.size))
    accuracy = margin_accuracy(margin)
    over = None if accuracy is None or baseline["length_baseline"] is None else accuracy - baseline["length_baseline"]
    return {"shorter_chosen_pairs": int(shorter.sum()), "shorter_chosen_accuracy": margin_accuracy(margin[shorter]),
            "longer_chosen_pairs": int(longer.sum()), "longer_chosen_accuracy": margin_accuracy(margin[longer]),
            **baseline, "margin_over_length_baseline": over}


def length_baseline(shorter_chosen_pairs: int, longer_chosen_pairs: int, pairs: int) -> dict:
    """The length-only baseline: the better of "the shorter reply wins" and "the longer reply wins" on these
    pairs, an equal-length pair counted as half right (a coin flip). Lengths are each response's own tokens as
    the model saw them. A reward must beat this to show it learned more than length (issue 29).

    `length_baseline_rule` names the winning rule ("shorter wins" on a tie between the two rules); swapping
    chosen and rejected swaps the counts, so the rule flips and the value stays. Only counts are needed, so
    stored benchmark rows that kept them (benchmarks/quality_bench.py) get the same figure."""
    equal = pairs - shorter_chosen_pairs - longer_chosen_pairs
    if min(shorter_chosen_pairs, longer_chosen_pairs, equal) < 0:
        raise ValueError(f"{shorter_chosen_pairs} chosen-shorter and {longer_chosen_pairs} chosen-longer pairs "
                         f"do not fit in {pairs} pairs")
    if pairs == 0:
        return {"length_baseline": None, "length_baseline_rule": None, "equal_length_pairs": 0}
    shorter_wins = (shorter_chosen_pairs + equal / 2) / pairs
    longer_wins = (longer_chosen_pairs + equal / 2) / pairs
    rule, value = ("shorter wins", shorter_wins) if shorter_wins >= longer_wins else ("longer wins", longer_wins)
    return {"length_baseline": value, "length_baseline_rule": rule, "equal_length_pairs": equal}


def worst_pairs(chosen: Sequence[float], rejected: Sequence[float], k: int = 10,
                chosen_lengths: Sequence[int] | None = None, rejected_lengths: Sequence[int] | None = None,
                ids: Sequence[str] | None = None) -> list[dict]:
    """The k pairs with the lowest margin r_chosen − r_rejected (most confidently wrong first)."""
    chosen, rejected = _as_array(chosen, "chosen"), _as_array(rejected, "rejected")
    margin = chosen - rejected
    order = np.argsort(margin, kind="stable")[:k]
    rows = []
    for i in order.tolist():
        row = {"index": i, "margin": float(margin[i]), "chosen": float(chosen[i]), "rejected": float(rejected[i])}
        if chosen_lengths is not None and rejected_lengths is not None:
            row["chosen_length"] = int(chosen_lengths[i])
            row["rejected_length"] = int(rejected_lengths[i])
        if ids is not None:
            row["id"] = ids[i]
        rows.append(row)
    return rows


def diagnose(chosen: Sequence[float], rejected: Sequence[float], chosen_lengths: Sequence[int],
             rejected_lengths: Sequence[int], sources: Sequence[str] | None = None,
             ids: Sequence[str] | None = None, k: int = 10, bins: int = 10,
             length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES) -> dict:
    """Everything above in one dict: the diagnostics written at the end of an evaluation."""
    result = {
        "rewards": reward_stats(chosen, rejected),
        "calibration": calibration(chosen, rejected, bins=bins),
        "length": length_bias(chosen, rejected, chosen_lengths, rejected_lengths, edges=length_edges),
        "worst_pairs": worst_pairs(chosen, rejected, k, chosen_lengths, rejected_lengths, ids),
    }
    if sources is not None:
        result["by_source"] = accuracy_by_source(chosen, rejected, sources, chosen_lengths, rejected_lengths)
    return result
