"""Reward quality at equal time: the issue-9 TRL reference run vs rlhf_rm's default job, in one go.

  reference  TRL RewardTrainer, SmolLM2-135M-Instruct, the first 400 HH-RLHF harmless train pairs (TRL drops
             those over max length), max length 512, batch 8, one epoch, lr 5e-5, cosine, 5% warmup,
             center_rewards_coefficient 0.01, fp32 (as benchmarks/train_bench.py; in its own process)
  rlhf_rm    the README's main job, `python -m rlhf_rm.train experiment=quickstart` (defaults: 2 Ray Train
             workers, prefix-shared token-budget batches, the same 400 pairs and max length)

Both score the same 208 dev pairs. Wall-clock is reported two ways: the training loop alone, and the
whole job (model load, data, Ray start-up, training, evaluation). Run it on a quiet machine.

    python benchmarks/quality_bench.py [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_bench  # noqa: E402  (the TRL run is the same code as the throughput benchmark's baseline)


def reference(queue, backbone: str, work: str) -> None:
    started = time.perf_counter()
    args = argparse.Namespace(pairs=400, dev_pairs=208, max_length=512, lr=5e-5, batch_pairs=8, work=work,
                              center_rewards=0.01)
    try:
        result = train_bench.run_trl(args, backbone)
        result["job_seconds"] = time.perf_counter() - started
        queue.put(result)
    except BaseException as exc:  # reported, never hidden
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_reference(backbone: str, work: str) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=reference, args=(queue, backbone, work))
    process.start()
    result = queue.get()
    process.join()
    return result


def run_default(work: str, overrides: list[str]) -> dict:
    run_dir = Path(work) / "rlhf_rm"
    command = [sys.executable, "-m", "rlhf_rm.train", "experiment=quickstart", "logger=none",
               f"hydra.run.dir={run_dir}", f"trainer.storage_path={Path(work) / 'ray'}", *overrides]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.perf_counter() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"pairs": metrics["data"]["train"]["groups"], "seconds": metrics["train_seconds"], "job_seconds": seconds,
            "dev_accuracy": metrics["dev_accuracy"], "dev_pairs": metrics.get("dev_pairs")}


def table(results: dict, device: str) -> str:
    lines = [f"Device: {device}; dev accuracy on the 208 HH-RLHF harmless dev pairs.", "",
             "| run | train pairs | training loop (s) | whole job (s) | dev accuracy |", "|---|---|---|---|---|"]
    for label, r in results.items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:80]} | | | |")
            continue
        lines.append(f"| {label} | {r['pairs']} | {r['seconds']:.0f} | {r['job_seconds']:.0f} | {r['dev_accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="outputs/quality_bench")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--write-readme", action="store_true", help="replace the table in README.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the rlhf_rm run")
    args = parser.parse_args()
    work = str(Path(args.work).resolve())

    from rlhf_rm.backbone import resolve_backbone

    backbone = resolve_backbone("smollm2-135m-instruct")
    results = {}
    if not args.skip_reference:
        results["TRL RewardTrainer (issue-9 reference config)"] = run_reference(backbone, work)
        print(json.dumps(results), flush=True)
    results["rlhf_rm defaults (`make train`)"] = run_default(work, args.overrides)
    import platform

    device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    text = table(results, device) + f"\n\nCommand: `python benchmarks/quality_bench.py {' '.join(sys.argv[1:])}`"
    print("\n" + text)
    (Path(work) / "quality_bench.md").write_text(text + "\n")
    if args.write_readme:
        train_bench.write_readme_block("quality-bench", text, "Reward quality at equal time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
