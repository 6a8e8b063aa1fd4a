"""Listwise vs pairwise losses on OpenAssistant rankings, same model, data and budget.

Trains the default backbone three times on the OASST train split (by prompt hash) and scores the
held-out rankings the same way each time (top-1 accuracy, Kendall τ, accuracy on adjacent pairs):
  plackett_luce   on the full rankings
  pairwise_all    on the full rankings (all K-choose-2 pairs per prompt)
  bradley_terry   on adjacent pairs cut from the rankings (best vs 2nd, 2nd vs 3rd, ...)

    python benchmarks/loss_compare.py [--trees 60] [--max-length 384] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "plackett_luce": ["data=oasst", "loss=plackett_luce"],
    "pairwise_all": ["data=oasst", "loss=pairwise_all"],
    "bradley_terry (adjacent pairs)": ["data=oasst_adjacent_pairs", "loss=bradley_terry"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", type=int, default=60, help="message trees read (train and dev split by hash)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--out", default="outputs/loss_compare")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset, by first word")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import ray

    from rlhf_rm.config import compose
    from rlhf_rm.train import run

    results = {}
    chosen = {v.strip() for v in args.variants.split(",")}
    for name, overrides in VARIANTS.items():
        if name.split()[0] not in {c.split()[0] for c in chosen}:
            continue
        cfg = compose([*overrides, f"data.limit={args.trees}", f"data.dev_limit={args.trees}",
                       f"data.max_length={args.max_length}", "logger=none", *args.overrides])
        started = time.perf_counter()
        metrics = run(cfg, Path(args.out) / name.split()[0])
        results[name] = {k: metrics.get(f"dev_{k}") for k in
                         ("ranking_top1_accuracy", "ranking_kendall_tau", "rankings")}
        results[name]["wall_s"] = time.perf_counter() - started
        results[name]["train_examples"] = metrics["data"]["train"]["groups"]
        print(name, json.dumps(results[name]), flush=True)
    ray.shutdown()
    lines = ["| loss (training data) | train examples | dev top-1 accuracy | dev Kendall τ | wall (s) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['train_examples']} | {r['ranking_top1_accuracy']:.3f} | "
                     f"{r['ranking_kendall_tau']:.3f} | {r['wall_s']:.0f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
