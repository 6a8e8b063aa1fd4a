"""Serving pool throughput and latency against the bare model forward, measured in one run on one model.

    python benchmarks/serve_bench.py                       # a built-in small random Llama (no downloads)
    python benchmarks/serve_bench.py --checkpoint outputs/main_320/checkpoint --texts 64
    python benchmarks/serve_bench.py --device cuda --dtype bf16 --checkpoint <ckpt>   # on a GPU machine

Rows: bare forward (RewardScorer.score_encoded on pre-tokenized texts, best tokens-per-forward of a sweep),
then the pool through a DeploymentHandle and through HTTP, fed by many concurrent callers; then latency
of single-text requests at low (1 caller) and high concurrency. One replica with the same torch threads
as the bare forward, so the ratio is the pool's overhead and nothing else. Last, batch invariance: the largest
difference between a text's score alone and inside random batches (bf16 on a GPU is where it shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def fixture_pairs() -> tuple[list[str], list[str]]:
    prompts, responses = [], []
    for name in ("hh_train_small.jsonl", "hh_dev_small.jsonl"):
        for line in (FIXTURES / name).read_text().splitlines():
            for text in json.loads(line).values():
                if not isinstance(text, str) or "\n\nAssistant:" not in text:
                    continue
                cut = text.rfind("\n\nAssistant:") + len("\n\nAssistant:")
                prompts.append(text[:cut])
                responses.append(text[cut:])
    return prompts, responses


def build_bench_checkpoint(directory: Path, hidden: int, layers: int, max_length: int = 512) -> str:
    import torch

    from rlhf_rm.model import load_reward_model, load_tokenizer
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.tiny import build_tiny_backbone

    prompts, responses = fixture_pairs()
    backbone = build_tiny_backbone(directory / "backbone", [p + r for p, r in zip(prompts, responses)],
                                   hidden_size=hidden, layers=layers)
    tokenizer = load_tokenizer(backbone)
    torch.manual_seed(0)
    model = load_reward_model(backbone, tokenizer, head_init_std=1.0)
    meta = {"reward_mean": 0.0, "reward_std": 1.0, "max_length": max_length,
            "base_model": f"random-llama-h{hidden}-l{layers}"}
    return str(export_checkpoint(model, tokenizer, directory / "checkpoint", meta))


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    ms = sorted(x * 1000 for x in latencies_s)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]


def bench_bare(scorer, encoded, sweep: list[int], singles: int) -> tuple[float, int, float]:
    """Best scores/s over tokens-per-forward settings, and the single-text forward p50 (ms)."""
    scorer.score_encoded(encoded[:8])  # warm-up
    best = (0.0, sweep[0])
    for tokens in sweep:
        scorer.tokens_per_batch = tokens
        start = time.perf_counter()
        scorer.score_encoded(encoded)
        best = max(best, (len(encoded) / (time.perf_counter() - start), tokens))
    times = []
    for e in encoded[:singles]:
        start = time.perf_counter()
        scorer.score_encoded([e])
        times.append(time.perf_counter() - start)
    return best[0], best[1], percentiles(times)[0]


async def drive(call, prompts, responses, callers: int, texts_per_request: int) -> tuple[float, list[tuple]]:
    """`callers` concurrent loops share the texts, each request `texts_per_request` long:
    (scores/s, (sent, received) perf_counter times per request, in the order they were sent by one caller)."""
    requests = [(prompts[i:i + texts_per_request], responses[i:i + texts_per_request])
                for i in range(0, len(prompts), texts_per_request)]
    queue = list(reversed(requests))
    spans = []

    async def loop():
        while queue:
            p, r = queue.pop()
            start = time.perf_counter()
            scores = await call(p, r)
            spans.append((start, time.perf_counter()))
            assert len(scores) == len(p)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(callers)))
    return len(prompts) / (time.perf_counter() - start), spans


def latencies(spans: list[tuple]) -> list[float]:
    return [end - start for start, end in spans]


STAGES = [  # (name, from, to): indexes into (sent, http entry, handler entry, thread start, tokenized,
            # forward done, handler return, received); the replica records 1..6 (recent_stages)
    ("caller -> replica handler (handle: router + actor call)", 0, 2),
    ("caller -> replica ASGI app (HTTP client + proxy + router + actor call)", 0, 1),
    ("ASGI app -> handler (FastAPI routing, auth, body validation)", 1, 2),
    ("handler -> forward thread (validation, queue, thread hand-off)", 2, 3),
    ("tokenize", 3, 4),
    ("forward (model)", 4, 5),
    ("forward thread -> handler return (hand-off back, result dict)", 5, 6),
    ("handler return -> caller (reply, serialization, proxy for HTTP)", 6, 7),
]


def stage_rows(spans: list[tuple], replica: list[tuple], bare_ms: float) -> list[tuple[str, float]]:
    """Median ms per stage of one caller's sequential single-text calls: the client's send/receive times
    lined up with the replica's (perf_counter is CLOCK_MONOTONIC: one clock for every process here)."""
    replica = replica[-len(spans):]
    assert len(replica) == len(spans), (len(replica), len(spans))
    joined = [(s, *r, e) for (s, e), r in zip(spans, replica)]
    http = joined[0][1] is not None
    rows = []
    for name, a, b in STAGES:
        if (not http and 1 in (a, b)) or (http and (a, b) == (0, 2)):
            continue  # HTTP splits caller -> handler at the ASGI app; a handle call has no ASGI step
        rows.append((name, statistics.median((t[b] - t[a]) * 1000 for t in joined)))
    total = statistics.median((e - s) * 1000 for s, e in spans)
    rows.append(("total (p50 of the call)", total))
    rows.append(("overhead: total - bare single-text forward", total - bare_ms))
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained checkpoint; default: build a random Llama")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--texts", type=int, default=256, help="texts per throughput measurement")
    parser.add_argument("--max-length", type=int, default=128,
                        help="rendering max length of the built-in checkpoint (a trained one keeps its own)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, bare forward and replica alike")
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers for throughput / high load")
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--single-calls", type=int, default=100,
                        help="sequential single-text calls of the one-caller rows (and of the bare single forward)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--device", default="cpu", help="cpu | cuda: the bare forward and the replica alike")
    parser.add_argument("--dtype", default="float32", type=lambda v: {"bf16": "bfloat16", "fp16": "float16",
                                                                      "fp32": "float32"}.get(v, v),
                        choices=["float32", "bfloat16", "float16"], help="also bf16 / fp16 / fp32")
    parser.add_argument("--invariance-shuffles", type=int, default=5,
                        help="random batchings of the texts for the batch-invariance row (0: skip)")
    parser.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                        help="HTTP through Serve's Python proxy or HAProxy (serve config `ingress`)")
    parser.add_argument("--batch-wait", type=float, default=None,
                        help="the pool's batch_wait_timeout_s (default: the shipped one)")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="instead: sustained load for SECONDS (replica memory growth and errors; see soak())")
    parser.add_argument("--soak-callers", type=int, default=8)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from rlhf_rm.checkpoint.scorer import RewardScorer

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    checkpoint = args.checkpoint or build_bench_checkpoint(workdir, args.hidden, args.layers, args.max_length)
    all_prompts, all_responses = fixture_pairs()
    reps = -(-args.texts // len(all_prompts))
    prompts, responses = (all_prompts * reps)[:args.texts], (all_responses * reps)[:args.texts]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.soak:
        from serve_soak import soak  # beside this file

        return soak(args, checkpoint, prompts, responses)

    scorer = RewardScorer(checkpoint, device=args.device, dtype=args.dtype)  # lengths: the checkpoint's rendering
    encoded = [scorer.encode(p, r) for p, r in zip(prompts, responses)]
    mean_tokens = sum(e.shared_length() for e in encoded) / len(encoded)
    bare_rate, best_tokens, bare_single_ms = bench_bare(scorer, encoded, [1024, 2048, 4096, 8192, 16384],
                                                        args.single_calls)
    scorer.tokens_per_batch = best_tokens  # batches as the pool will form them
    invariance = batch_invariance(scorer, encoded, args.invariance_shuffles)
    rows, stages, batches = bench_pool(args, checkpoint, best_tokens, prompts, responses)

    model = checkpoint if args.checkpoint else f"random Llama h{args.hidden} l{args.layers}"
    model += f" on {args.device} in {args.dtype}"
    print(f"\nmodel: {model}; {args.texts} texts, mean {mean_tokens:.0f} tokens (max_length {scorer.spec.max_length}); "
          f"torch threads {args.threads}; ingress {args.ingress}; "
          f"bare forward best at tokens_per_forward={best_tokens}; "
          f"mean pool batch {batches['texts'] / max(1, batches['count']):.1f} texts; "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print_tables(args, rows, stages, bare_rate, bare_single_ms)
    if invariance:
        print(f"\nbatch invariance ({args.device}, {args.dtype}): largest |score alone - score inside a batch| over "
              f"{len(encoded)} texts x {args.invariance_shuffles} random batchings: {invariance[0]:.3g} "
              f"({invariance[1]:.3g} of the scores' std); texts whose score moved: {invariance[2]}")
    return 0


def batch_invariance(scorer, encoded, shuffles: int, seed: int = 0) -> tuple[float, float, int] | None:
    """Each text scored alone against the same text inside random batches (random mates, random batch sizes up
    to 32, as the pool merges callers' texts): (largest difference, that over the std of the scores, how many
    texts moved at all). In fp32 this is 0 up to rounding; in bf16 kernels may pick other reductions per shape
    (veRL serializes its /classify to one sequence for this reason)."""
    import random

    if shuffles <= 0:
        return None
    alone = [scorer.score_encoded([e])[0] for e in encoded]
    rng = random.Random(seed)
    worst, moved = 0.0, set()
    for _ in range(shuffles):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        start = 0
        while start < len(order):
            batch = order[start:start + rng.randint(2, 32)]
            start += len(batch)
            for i, score in zip(batch, scorer.score_encoded([encoded[i] for i in batch])):
                worst = max(worst, abs(score - alone[i]))
                if score != alone[i]:
                    moved.add(i)
    return worst, worst / (statistics.pstdev(alone) or 1.0), len(moved)


def start_pool(args, checkpoint: str, tokens_per_forward: int):
    import ray

    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig

    ray.init(num_cpus=os.cpu_count() + 2, include_dashboard=False, log_to_driver=False)
    os.environ.pop("RLHF_RM_SERVE_TOKEN", None)
    wait = {} if args.batch_wait is None else {"batch_wait_timeout_s": args.batch_wait}  # else the shipped default
    config = ServeConfig(app_name="rm_bench", port=args.port, ingress=args.ingress, num_replicas=1,
                         num_cpus_per_replica=1, device=args.device, dtype=args.dtype,
                         torch_threads=args.threads,
                         live=LiveSettings(checkpoint=checkpoint, max_batch_size=256,
                                           tokens_per_forward=tokens_per_forward, **wait))
    return start(config), f"http://127.0.0.1:{args.port}"


def bench_pool(args, checkpoint: str, tokens_per_forward: int, prompts, responses):
    """Throughput and single-text rows through the handle and HTTP; per-stage times of the one-caller rows."""
    import httpx
    import ray
    from ray import serve

    from rlhf_rm.serve import RewardClient

    handle, url = start_pool(args, checkpoint, tokens_per_forward)
    singles = args.single_calls
    client = RewardClient("rm_bench")  # what a PPO actor holds: small calls over Serve's gRPC transport

    async def via_handle(p, r):
        return await client.ascore(p, r)

    async def run_all():
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=256)) as http:
            async def via_http(p, r):
                reply = await http.post("/score", json={"prompts": p, "responses": r})
                reply.raise_for_status()
                return reply.json()["scores"]

            rows, stages = {}, {}
            for name, call in (("handle", via_handle), ("http", via_http)):
                await drive(call, prompts[:32], responses[:32], 4, 4)  # warm-up
                rows[f"{name} throughput"] = await drive(call, prompts, responses, args.callers,
                                                         args.texts_per_request)
                rows[f"{name} 1 caller"] = await drive(call, prompts[:singles], responses[:singles], 1, 1)
                stages[name] = await handle.recent_stages.remote(singles)
                rows[f"{name} {args.callers} callers"] = await drive(call, prompts, responses, args.callers, 1)
            return rows, stages

    rows, stages = asyncio.run(run_all())
    batches = handle.info.remote().result()["batches"]
    serve.shutdown()
    ray.shutdown()
    return rows, stages, batches


def print_tables(args, rows: dict, stages: dict, bare_rate: float, bare_single_ms: float) -> None:
    print("| path | callers x texts/request | scores/s | vs bare | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    print(f"| bare forward | batch of {args.texts} | {bare_rate:.3g} | 1.00 | {bare_single_ms:.2f} (1 text) | |")
    shapes = {"throughput": f"{args.callers} x {args.texts_per_request}", "1 caller": "1 x 1",
              f"{args.callers} callers": f"{args.callers} x 1"}
    for key, (rate, spans) in rows.items():
        name, kind = key.split(" ", 1)
        p50, p99 = percentiles(latencies(spans))
        print(f"| pool {name} | {shapes[kind]} | {rate:.3g} | {rate / bare_rate:.2f} | {p50:.2f} | {p99:.2f} |")
    for name in ("handle", "http"):
        print(f"\nOne caller, {args.single_calls} single-text calls through the {name}: p50 ms per stage "
              f"(bare single-text forward {bare_single_ms:.2f} ms)\n")
        print("| stage | p50 ms |\n|---|---|")
        for stage, ms in stage_rows(rows[f"{name} 1 caller"][1], stages[name], bare_single_ms):
            print(f"| {stage} | {ms:.2f} |")
    print("\npool vs bare forward throughput: " + ", ".join(
        f"{key} {rate / bare_rate:.2f}x" for key, (rate, _) in rows.items()))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
