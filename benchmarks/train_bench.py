"""Training throughput: TRL's RewardTrainer vs rlhf_rm with each optimisation added, in one run.

Same backbone (SmolLM2-135M-Instruct), same first N pairs of HH-RLHF harmless train, same max length,
learning rate, epoch and pairs per optimizer step; every configuration then scores the same dev pairs.
Each configuration trains in a fresh child process (sequentially, never two at once) so its peak
memory is its own; timings are wall-clock of the training loop only (model loading excluded).

    python benchmarks/train_bench.py --pairs 48 --dev-pairs 64 [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless"
CONFIGS = {
    "trl": "TRL RewardTrainer (baseline)",
    "off": "rlhf_rm, everything off (padded rows, random batches of fixed size)",
    "length": "+ length-aware token-budget batches",
    "prefix": "+ shared prompt prefix (default)",
}


def load_slices(pairs: int, dev_pairs: int):
    from rlhf_rm.data import load_pairs

    train, _ = load_pairs(DATA / "train.jsonl", limit=pairs)
    dev, _ = load_pairs(DATA / "dev.jsonl", limit=dev_pairs)
    return train, dev


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- TRL ---------------------------------------------------------------------------------------------
def run_trl(args, backbone: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    train, dev = load_slices(args.pairs, args.dev_pairs)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = {"chosen": [p.prompt + p.chosen for p in train], "rejected": [p.prompt + p.rejected for p in train]}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = RewardConfig(output_dir=str(Path(args.work) / "trl"), per_device_train_batch_size=args.batch_pairs,
                          num_train_epochs=1, learning_rate=args.lr, max_length=args.max_length, report_to="none",
                          use_cpu=device == "cpu", save_strategy="no", logging_steps=10_000, disable_dropout=True,
                          # Same precision and no recomputation as rlhf_rm (TRL defaults both on; bf16 on a
                          # CPU without bf16 units is ~10x slower, which would flatter us).
                          bf16=False, gradient_checkpointing=False,
                          lr_scheduler_type="cosine", warmup_steps=0.05, seed=getattr(args, "seed", 0),
                          dataloader_num_workers=0,
                          center_rewards_coefficient=getattr(args, "center_rewards", None))
    trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_dict(rows), processing_class=tokenizer)
    kept = trainer.train_dataset
    real_tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in kept)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # Dev accuracy in TRL's training rendering (RewardTrainer appends EOS to every text it trains on), right
    # padding, HF pooling; a text over max_length keeps its last tokens, the rule rlhf_rm's checkpoints use.
    model.eval()
    tokenizer.truncation_side = "left"
    eos = tokenizer.eos_token
    scores = {"chosen": [], "rejected": [], "chosen_lengths": [], "rejected_lengths": []}
    with torch.no_grad():
        for p in dev:
            enc = tokenizer([p.prompt + p.chosen + eos, p.prompt + p.rejected + eos], return_tensors="pt", padding=True,
                            truncation=True, max_length=args.max_length)
            chosen, rejected = model(**enc).logits.squeeze(-1).tolist()
            scores["chosen"].append(chosen)
            scores["rejected"].append(rejected)
            for side, text in (("chosen", p.chosen), ("rejected", p.rejected)):
                scores[f"{side}_lengths"].append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    correct = sum(c > r for c, r in zip(scores["chosen"], scores["rejected"]))
    result = {"pairs": len(kept), "dropped": args.pairs - len(kept), "seconds": seconds, "real_tokens": real_tokens,
              "dev_accuracy": correct / len(dev)}
    if getattr(args, "keep_scores", False):
        result["scores"] = scores
    return result


# -- rlhf_rm -----------------------------------------------------------------------------------------
def run_rlhf_rm(args, backbone: str, variant: str) -> dict:
    import random

    import torch

    from rlhf_rm.batching.collate import collate
    from rlhf_rm.batching.planner import plan_steps, row_length
    from rlhf_rm.batching.tokenize import ResponseEncoder
    from rlhf_rm.config import TrainerConfig
    from rlhf_rm.losses import build_loss
    from rlhf_rm.evaluation.metrics import group_metrics
    from rlhf_rm.model import load_reward_model, load_tokenizer
    from rlhf_rm.checkpoint.scorer import score_groups
    from rlhf_rm.training.steps import build_optimizer, train_step

    train, dev = load_slices(args.pairs, args.dev_pairs)
    tokenizer = load_tokenizer(backbone)
    encoder = ResponseEncoder(tokenizer, max_length=args.max_length)
    groups = [encoder.encode_pair(p) for p in train]
    dev_groups = [encoder.encode_pair(p) for p in dev]
    layout = "prefix_shared" if variant == "prefix" else "separate"
    if variant == "off":
        order = list(range(len(groups)))
        random.Random(0).shuffle(order)
        steps = [order[i: i + args.batch_pairs] for i in range(0, len(order), args.batch_pairs)]
    else:
        lengths = [row_length(g, layout) for g in groups]
        # Budget = the mean cost of the configured number of pairs, so steps hold as many pairs on average.
        budget = int(args.batch_pairs * sum(lengths) / len(lengths))
        steps = [assignment[0] for assignment in plan_steps(lengths, 1, budget, seed=0)]
    torch.manual_seed(0)
    model = load_reward_model(backbone, tokenizer, head_init_std=0.02)
    settings = TrainerConfig(lr=args.lr, weight_decay=0.0, warmup_ratio=0.05, lr_schedule="cosine",
                             head_lr_multiplier=1.0, max_grad_norm=1.0)
    optimizer, scheduler = build_optimizer(model, settings, len(steps))
    loss_fn = build_loss({"name": "bradley_terry"})
    computed_tokens = real_tokens = 0
    started = time.perf_counter()
    for step in steps:
        batch_groups = [groups[i] for i in step]
        batch = collate(batch_groups, tokenizer.pad_token_id, layout)
        train_step(model, batch, batch_groups, loss_fn, optimizer, scheduler, max_grad_norm=settings.max_grad_norm)
        computed_tokens += batch.input_ids.numel()
        real_tokens += sum(g.separate_length() for g in batch_groups)  # the same count TRL's figure uses
    seconds = time.perf_counter() - started
    chunks = [list(range(start, min(start + 8, len(dev_groups)))) for start in range(0, len(dev_groups), 8)]
    scores = score_groups(model, dev_groups, tokenizer.pad_token_id, layout="prefix_shared", batches=chunks).rewards
    return {"pairs": len(groups), "dropped": 0, "seconds": seconds, "real_tokens": real_tokens,
            "computed_tokens": computed_tokens, "dev_accuracy": group_metrics(dev_groups, scores)["accuracy"]}


def child(name: str, args, backbone: str, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    try:
        result = run_trl(args, backbone) if name == "trl" else run_rlhf_rm(args, backbone, name)
        result["peak_rss_mb"] = peak_rss_mb()
        queue.put(result)
    except BaseException as exc:  # reported in the table, never hidden
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def format_table(results: dict, args, device: str) -> str:
    base = results.get("trl", {})
    lines = [f"Device: {device}; {args.pairs} pairs of HH-RLHF harmless train, max length {args.max_length}, "
             f"lr {args.lr}, {args.batch_pairs} pairs per step, 1 epoch, {args.threads} threads; dev accuracy on "
             f"the first {args.dev_pairs} dev pairs.", "",
             "| configuration | pairs/s | non-pad tokens/s | × TRL pairs/s | peak RSS (MB) | dev accuracy |",
             "|---|---|---|---|---|---|"]
    for name, label in CONFIGS.items():
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:80]} | | | | |")
            continue
        pairs_s = r["pairs"] / r["seconds"]
        ratio = pairs_s / (base["pairs"] / base["seconds"]) if base and "error" not in base else float("nan")
        note = f" ({r['dropped']} dropped for length)" if r.get("dropped") else ""
        lines.append(f"| {label} | {pairs_s:.3f}{note} | {r['real_tokens'] / r['seconds']:.0f} | {ratio:.2f}× | "
                     f"{r['peak_rss_mb']:.0f} | {r['dev_accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--dev-pairs", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--work", default="/tmp/rlhf_rm_train_bench")
    parser.add_argument("--write-readme", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()

    from rlhf_rm.backbone import resolve_backbone

    backbone = resolve_backbone("smollm2-135m-instruct")
    context = mp.get_context("spawn")
    results = {}
    for name in args.configs.split(","):
        queue = context.Queue()
        process = context.Process(target=child, args=(name, args, backbone, queue))
        process.start()
        results[name] = queue.get()
        process.join()
        print(name, json.dumps(results[name]), flush=True)
    import platform

    device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    table = format_table(results, args, device)
    command = "python benchmarks/train_bench.py " + " ".join(sys.argv[1:])
    print("\n" + table + f"\n\nCommand: `{command}`")
    if args.write_readme:
        write_readme_block("train-bench", f"{table}\n\nCommand: `{command}`", "Training throughput")
    return 0


def write_readme_block(tag: str, text: str, heading: str) -> None:
    """Replace README.md's `<!-- tag -->...<!-- /tag -->` block with `text` (or append it under `heading`)."""
    readme = ROOT / "README.md"
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    content = readme.read_text()
    block = f"{start}\n{text}\n{end}"
    if start in content:
        content = content[: content.index(start)] + block + content[content.index(end) + len(end):]
    else:
        content += f"\n## {heading}\n\n{block}\n"
    readme.write_text(content)


if __name__ == "__main__":
    raise SystemExit(main())
