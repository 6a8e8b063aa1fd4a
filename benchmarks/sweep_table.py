"""Collect a Hydra multirun (e.g. `python -m rlhf_rm.train -m experiment=sweep`) into a Markdown table.

    python benchmarks/sweep_table.py multirun/2026-11-28/01-32-00 [--metric dev_accuracy]

One row per job: its sweep overrides, dev accuracy, accuracy where the chosen reply is the shorter one,
calibration error (ECE), training examples/s and wall time,
best first. A job that failed (no metrics.json) is listed as failed, never left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def collect(sweep_dir: Path) -> list[dict]:
    import yaml

    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if (
            job / ".hydra" / "overrides.yaml").exists() else []
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        rows.append({"job": int(job.name), "overrides": [o for o in overrides if not o.startswith("experiment=")],
                     "metrics": metrics})
    return rows


def table(rows: list[dict], metric: str) -> str:
    done = sorted((r for r in rows if r["metrics"]), key=lambda r: -(r["metrics"].get(metric) or 0))
    lines = [f"| overrides | {metric} | margin over the length-only baseline | accuracy, chosen shorter | ECE "
             "| train examples/s | wall (s) |", "|---|---|---|---|---|---|---|"]
    for r in done:
        m = r["metrics"]
        lines.append(f"| {' '.join(r['overrides'])} | {m.get(metric, float('nan')):.3f} | "
                     f"{m.get('dev_margin_over_length_baseline', float('nan')):+.3f} | "  # nan: run before issue 29
                     f"{m.get('dev_accuracy_chosen_shorter', float('nan')):.3f} | {m.get('dev_ece', float('nan')):.3f} | "
                     f"{m.get('train_pairs_per_s', float('nan')):.3f} | "
                     f"{m.get('wall_seconds', float('nan')):.0f} |")
    lines += [f"| {' '.join(r['overrides'])} | failed (no metrics.json) | | | | | |" for r in rows if not r["metrics"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="dev_accuracy")
    args = parser.parse_args()
    print(table(collect(args.sweep_dir), args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
