"""Evaluation metrics on scored preference groups: pairs, soft/tie labels and rankings.

Pair and per-source accuracy come from rlhf_rm.evaluation.diagnostics (one definition each), so the trainer's dev
metrics, its diagnostics.json and the `rlhf_rm.evaluate` report agree by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlhf_rm.evaluation.diagnostics import accuracy_by_source, diagnose, margin_accuracy

# A tie counts as recognised when the model's preference probability σ(Δ) is within this of 0.5.
TIE_TOLERANCE = 0.1


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy counts a pair as right only when chosen scores strictly above rejected."""
    chosen, rejected = chosen.double(), rejected.double()
    margin = chosen - rejected
    everything = torch.cat([chosen, rejected])
    return {
        "accuracy": margin_accuracy(margin.numpy()),
        "mean_margin": float(margin.mean()),
        "reward_mean": float(everything.mean()),
        "reward_std": float(everything.std(unbiased=False)),
        "chosen_mean": float(chosen.mean()),
        "rejected_mean": float(rejected.mean()),
        "pairs": int(chosen.numel()),
    }


def kendall_tau(human_ranks: list, scores: list) -> float:
    """Kendall τ-b between the human order (rank 0 = best) and the model's scores."""
    concordant = discordant = tied_human = tied_model = 0
    n = len(scores)
    for i in range(n):
        for j in range(i + 1, n):
            human = human_ranks[j] - human_ranks[i]  # > 0: i is better
            model = scores[i] - scores[j]  # > 0: model prefers i
            if human == 0 and model == 0:
                continue
            if human == 0:
                tied_human += 1
            elif model == 0:
                tied_model += 1
            elif (human > 0) == (model > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + tied_human) * (concordant + discordant + tied_model))
    return (concordant - discordant) / denominator if denominator else 0.0


def group_metrics(groups, scores: list[list[float]]) -> dict[str, float]:
    """Metrics per data shape, plus per-source pair accuracy. `scores[i]` are group i's rewards."""
    out: dict[str, float] = {}
    hard = hard_pairs(groups, scores)
    soft = [(g, s) for g, s in zip(groups, scores) if g.kind == "pair"]
    rankings = [(g, s) for g, s in zip(groups, scores) if g.kind == "ranking"]
    if hard.chosen:
        out.update(pair_metrics(torch.tensor(hard.chosen), torch.tensor(hard.rejected)))
    if soft and len(soft) != len(hard.chosen):
        correct, agreement = [], []
        for g, s in soft:
            p_model = 1 / (1 + math.exp(-(s[0] - s[1])))
            if g.probability == 0.5:
                correct.append(abs(p_model - 0.5) < TIE_TOLERANCE)
            else:
                correct.append((p_model > 0.5) == (g.probability > 0.5) and p_model != 0.5)
            agreement.append(1 - abs(p_model - g.probability))
        out["tie_aware_accuracy"] = sum(correct) / len(correct)
        out["soft_label_agreement"] = sum(agreement) / len(agreement)
        out["ties"] = sum(g.probability == 0.5 for g, _ in soft)
    if rankings:
        top1, taus = [], []
        for g, s in rankings:
            best = max(range(len(s)), key=lambda i: s[i])
            top1.append(g.ranks[best] == min(g.ranks))
            taus.append(kendall_tau(list(g.ranks), s))
        out["ranking_top1_accuracy"] = sum(top1) / len(top1)
        out["ranking_kendall_tau"] = sum(taus) / len(taus)
        out["rankings"] = len(rankings)
        if "reward_mean" not in out:
            flat = torch.tensor([v for _, s in rankings for v in s], dtype=torch.float64)
            out["reward_mean"], out["reward_std"] = float(flat.mean()), float(flat.std(unbiased=False))
    pointwise = [(g.score, s[0]) for g, s in zip(groups, scores) if g.kind == "pointwise"]
    if pointwise:  # regression data (loss=pointwise_mse): the error against the labels, in the labels' units
        out["pointwise_mse"] = sum((reward - label) ** 2 for label, reward in pointwise) / len(pointwise)
        out["pointwise"] = len(pointwise)
        if "reward_mean" not in out:  # serving's normalization reads these from the checkpoint
            flat = torch.tensor([reward for _, reward in pointwise], dtype=torch.float64)
            out["reward_mean"], out["reward_std"] = float(flat.mean()), float(flat.std(unbiased=False))
    by_source = accuracy_by_source(hard.chosen, hard.rejected, hard.sources) if hard.chosen else {}
    if len(by_source) > 1:
        for source, row in by_source.items():
            out[f"accuracy/{source}"] = row["accuracy"]
    return out


@dataclass
class HardPairs:
    """The pairs with a preferred side (soft labels p != 0.5), oriented preferred-first."""

    chosen: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    chosen_lengths: list = field(default_factory=list)  # response tokens (after truncation: what was scored)
    rejected_lengths: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    ids: list = field(default_factory=list)  # the group's index, as a string

    def diagnose(self, **options) -> dict:
        """rlhf_rm.evaluation.diagnostics.diagnose on these pairs (length bias, calibration, worst pairs, per source)."""
        return diagnose(self.chosen, self.rejected, self.chosen_lengths, self.rejected_lengths,
                        sources=self.sources, ids=self.ids, **options)


def hard_pairs(groups, scores: list[list[float]]) -> HardPairs:
    """Scored pair groups with a preferred side; for a soft label p < 0.5 the second response is preferred."""
    pairs = HardPairs()
    for index, (group, score) in enumerate(zip(groups, scores)):
        if group.kind != "pair" or group.probability == 0.5:
            continue
        first, second = (0, 1) if group.probability > 0.5 else (1, 0)
        pairs.chosen.append(score[first])
        pairs.rejected.append(score[second])
        lengths = group.lengths()
        pairs.chosen_lengths.append(lengths[first])
        pairs.rejected_lengths.append(lengths[second])
        pairs.sources.append(group.source or "data")
        pairs.ids.append(str(index))
    return pairs


HEADLINE_KEYS = ("accuracy", "mean_margin", "tie_aware_accuracy", "ranking_top1_accuracy", "ranking_kendall_tau",
                 "pointwise_mse")


def headline(metrics: dict, prefix: str = "") -> str:
    """One line with the main metric of each data shape present, and the length-only baseline of the pairs."""
    line = ", ".join(f"{key} {metrics[prefix + key]:.3f}" for key in HEADLINE_KEYS if prefix + key in metrics)
    baseline = baseline_text(metrics, prefix)
    return f"{line}; {baseline}" if baseline else line


def baseline_text(metrics: dict, prefix: str = "", suffix: str = "") -> str:
    """"length-only baseline 0.553 (shorter wins), margin -0.014", from the keys dev_report.length_metrics adds
    (suffix "/<source>" for one source); empty when the metrics have no baseline."""
    value = metrics.get(f"{prefix}length_baseline{suffix}")
    if value is None:
        return ""
    margin = metrics.get(f"{prefix}margin_over_length_baseline{suffix}")
    return (f"length-only baseline {value:.3f} ({metrics.get(f'{prefix}length_baseline_rule{suffix}')}), "
            f"margin {'n/a' if margin is None else f'{margin:+.3f}'}")


def source_lines(metrics: dict, prefix: str = "") -> list[str]:
    """Printed lines for the end of training: the chosen shorter / longer split of the pair accuracy, overall
    and per dev source (record_diagnostics' keys), with each source's length-only baseline, e.g. "  hh_rlhf:
    accuracy 0.600; chosen shorter 0.700 (10 pairs), chosen longer 0.400 (10 pairs); length-only baseline
    0.550 (shorter wins), margin +0.050"."""
    def split(suffix: str) -> str:
        return ", ".join(f"chosen {side} {_fmt(metrics.get(f'{prefix}accuracy_chosen_{side}{suffix}'))} "
                         f"({metrics.get(f'{prefix}pairs_chosen_{side}{suffix}', 0)} pairs)"
                         for side in ("shorter", "longer"))

    if f"{prefix}pairs_chosen_shorter" not in metrics:
        return []
    lines = [f"  all sources: {split('')}"]
    sources = [key[len(f"{prefix}accuracy/"):] for key in metrics if key.startswith(f"{prefix}accuracy/")]
    lines += ["; ".join(filter(None, [f"  {source}: accuracy {_fmt(metrics[f'{prefix}accuracy/{source}'])}",
                                      split('/' + source), baseline_text(metrics, prefix, '/' + source)]))
              for source in sources]
    return lines


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
