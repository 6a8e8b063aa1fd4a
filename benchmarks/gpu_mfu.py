"""GPU throughput and model FLOPs utilization of the reward-model training step.

Runs rlhf_rm's own training step (batching → RewardModel → Bradley-Terry → AdamW) on one GPU for a
1B-class Llama built in code (random weights: FLOPs do not depend on them), on real HH-RLHF pairs
tokenized with the SmolLM2 tokenizer, in bf16 autocast, and compares, in one run on the same data:
  separate               padded rows, one per response (the prompt computed twice);
  packed+flex            OpenRLHF's packing_samples: every (prompt + response) its own document, packed
                         into one row per step with no padding, block-diagonal attention (FlexAttention
                         skips the masked blocks, as varlen FlashAttention does): the peer baseline;
  prefix_shared(+flex)   one row per pair, the prompt computed once (tree mask dense, or as a block mask);
  packed_shared+flex     ours packed: several pairs per row, each prompt once, document × tree block mask.
Any layout name takes "+flex" (FlexAttention block mask) or not (SDPA with the dense mask; packed rows
are then cut at --max-length tokens). Every flex layout's rewards are first checked against SDPA on the
same batch in fp32.

MFU = 6 · N · (tokens the model computed) / seconds / peak bf16 FLOP/s, with N the parameters
excluding embeddings (the usual convention); attention FLOPs are not counted, so this is a lower bound.

    python benchmarks/gpu_mfu.py --tokenizer DIR --data train.jsonl [--size 1b] [--steps 20] [--compile]
    python benchmarks/gpu_mfu.py --tokenizer DIR --data train.jsonl --dry-run   # CPU: tiny model, 2 steps
"""

from __future__ import annotations

import argparse
import json
import time

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
SIZES = {  # Llama-3.2-1B-like and a tiny one for a CPU smoke run
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--tokens-per-step", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layouts", default="separate,packed+flex,prefix_shared,prefix_shared+flex,packed_shared+flex")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU check of the script: tiny model, 48 pairs, 2 steps, SDPA layouts (flex needs a GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes)")
    args = parser.parse_args()
    if args.dry_run:
        args.size, args.pairs, args.steps, args.warmup = "tiny", 48, 2, 1
        args.max_length, args.tokens_per_step = min(args.max_length, 256), min(args.tokens_per_step, 4096)
        args.layouts = ",".join(n for n in args.layouts.split(",") if not n.endswith("+flex")) + ",packed,packed_shared"

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rlhf_rm.batching.collate import collate
    from rlhf_rm.batching.planner import plan_steps, row_length
    from rlhf_rm.batching.tokenize import ResponseEncoder
    from rlhf_rm.data import load_pairs
    from rlhf_rm.losses import build_loss
    from rlhf_rm.model import RewardModel, ensure_pad_token
    from rlhf_rm.training.model_state import set_attention
    from rlhf_rm.training.steps import train_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    ensure_pad_token(tokenizer)
    pairs, _ = load_pairs(args.data, limit=args.pairs)
    encoder = ResponseEncoder(tokenizer, max_length=args.max_length)
    groups = [encoder.encode_pair(p) for p in pairs]
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, **SIZES[args.size])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = RewardModel(LlamaForSequenceClassification(config)).to(device)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    loss_fn = build_loss({"name": "bradley_terry"})
    results = {"device": name, "params_non_embedding": n_params, "size": args.size, "compile": args.compile}
    for name in args.layouts.split(","):
        layout, flex = name.removesuffix("+flex"), name.endswith("+flex") or name == "prefix_flex"
        layout = "prefix_shared" if layout == "prefix_flex" else layout
        # Packed rows hold a whole step under FlexAttention (masked blocks are skipped); the dense SDPA mask
        # is T x T per row, so there they are cut at max_length.
        row_tokens = None if flex else args.max_length
        lengths = [row_length(g, layout) for g in groups]
        plan = [step[0] for step in plan_steps(lengths, 1, args.tokens_per_step, seed=0)]
        batch_groups = [[groups[i] for i in step] for step in plan]
        batches = [collate(step, tokenizer.pad_token_id, layout, row_tokens=row_tokens) for step in batch_groups]
        set_attention(model, "sdpa")
        if flex:
            results[f"{name}_vs_sdpa_fp32"] = flex_check(model, batches[0], device)
            print(f"{name} vs sdpa (fp32, same batch):", json.dumps(results[f"{name}_vs_sdpa_fp32"]), flush=True)
            set_attention(model, "flex")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
        step_model = torch.compile(model, dynamic=True) if args.compile else model
        needed = args.warmup + args.steps
        timed = [(batches[i % len(batches)], batch_groups[i % len(batches)]) for i in range(needed)]
        computed = pairs_done = 0
        started = None
        for index, (batch, step_groups) in enumerate(timed):
            if index == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            # rlhf_rm's own step (no LR schedule, no clipping: the raw step's throughput).
            train_step(step_model, batch, step_groups, loss_fn, optimizer, device=device, flex=flex,
                       autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16,
                                                       enabled=device.type == "cuda"))
            if index >= args.warmup:
                computed += int(batch.real_tokens)
                pairs_done += len(batch.group_sizes)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        flops = 6 * n_params * computed
        row = {"pairs_per_s": pairs_done / seconds, "tokens_per_s": computed / seconds,
               "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak if peak else None,
               "steps": args.steps, "pairs_timed": pairs_done,
               "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
        results[name] = row
        print(name, json.dumps(row), flush=True)
        del optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    for baseline in ("separate", "packed+flex", "packed"):
        for name in args.layouts.split(","):
            if baseline in results and name in results and name != baseline:
                results[f"{name}_vs_{baseline}_pairs_per_s"] = results[name]["pairs_per_s"] / results[baseline]["pairs_per_s"]
    print(json.dumps(results, indent=2))
    return 0


def flex_check(model, batch, device) -> dict:
    """Rewards of one prefix-shared batch under SDPA (dense mask) and FlexAttention (block mask), fp32."""
    import torch

    from rlhf_rm.training.model_state import set_attention

    with torch.no_grad():
        set_attention(model, "sdpa")
        dense = model(**{k: v.to(device) for k, v in batch.model_inputs().items()}).float()
        set_attention(model, "flex")
        flex = model(**{k: v.to(device) for k, v in batch.model_inputs(flex=True).items()}).float()
        set_attention(model, "sdpa")
    diff = (dense - flex).abs()
    return {"max_abs_diff": diff.max().item(), "max_rel_diff": (diff / dense.abs().clamp(min=1e-3)).max().item(),
            "rewards": dense.numel()}


if __name__ == "__main__":
    raise SystemExit(main())
