"""The evaluation report's figures (PNG files; no display needed on cluster nodes)."""

from __future__ import annotations

from pathlib import Path

from rlhf_rm.evaluation.pairs import ScoredPairs


def bucket_label(bucket: dict) -> str:
    return f"{bucket['low']}–{bucket['high']}" if bucket["high"] is not None else f"≥{bucket['low']}"


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


PLOTS = {
    "reliability": "reliability.png",
    "histograms": "reward_histograms.png",
    "length_buckets": "accuracy_by_length.png",
    "reward_vs_length": "reward_vs_length.png",
}


def plot_report(report: dict, scored: ScoredPairs, directory: Path) -> None:
    """The four figures of report.md, as PNG files in `directory`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt

    for draw, name in ((_reliability, "reliability"), (_histograms, "histograms"),
                       (_length_buckets, "length_buckets"), (_reward_vs_length, "reward_vs_length")):
        fig = draw(plt, report, scored)
        fig.tight_layout()
        fig.savefig(directory / PLOTS[name], dpi=110)
        plt.close(fig)


def _reliability(plt, report: dict, scored: ScoredPairs):
    """Observed preference frequency per bin of σ(r_a − r_b), against the diagonal."""
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
    return fig


def _histograms(plt, report: dict, scored: ScoredPairs):
    """Chosen vs rejected rewards on shared bins, and the margins."""
    import numpy as np

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
    return fig


def _length_buckets(plt, report: dict, scored: ScoredPairs):
    """Accuracy per length bucket, pair counts on the bars."""
    buckets = report["length"]["by_length_bucket"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [bucket_label(b) for b in buckets]
    bars = ax.bar(labels, [b["accuracy"] for b in buckets], color="tab:purple", alpha=0.8)
    for bar, bucket in zip(bars, buckets):
        ax.annotate(f"n={bucket['pairs']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(0.5, color="gray", linestyle="--")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("longer response in the pair (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by response length")
    return fig


def _reward_vs_length(plt, report: dict, scored: ScoredPairs):
    """A rising cloud means the reward is (partly) a length counter."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(scored.chosen_lengths, scored.chosen, s=8, alpha=0.5, label="chosen", color="tab:green")
    ax.scatter(scored.rejected_lengths, scored.rejected, s=8, alpha=0.5, label="rejected", color="tab:red")
    r = report["length"]["reward_length_correlation"]
    ax.set_title(f"Reward vs response length (Pearson r = {fmt(r)})")
    ax.set_xlabel("response tokens")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    return fig
