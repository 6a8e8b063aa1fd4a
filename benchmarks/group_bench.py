"""Group scoring (GRPO/RLOO: n responses to one prompt) against scoring the n full texts, in one run.

    python benchmarks/group_bench.py                                  # built-in random Llama h256 l4
    python benchmarks/group_bench.py --checkpoint outputs/<run>/checkpoint --groups 6

Each HH prompt is paired with n responses drawn from the HH fixture replies. Rows, for n = 4, 8, 16:
`RewardScorer.score_group` (one prefix-shared row per group: the prompt computed once) and the same
n texts scored one padded row each (`RewardScorer.score`), bare (no pool) and through the pool's
`/score_group` vs `/score` over HTTP. Before timing, the two paths are checked to agree (fp32, 1e-5).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import build_bench_checkpoint, fixture_pairs  # noqa: E402


def groups_of(n: int, count: int) -> list[tuple[str, list[str]]]:
    prompts, responses = fixture_pairs()
    long_prompts = sorted(set(prompts), key=len, reverse=True)  # GRPO prompts are the long part
    return [(long_prompts[g % len(long_prompts)], [responses[(g * n + k) % len(responses)] for k in range(n)])
            for g in range(count)]


def timed(call, repeats: int) -> float:
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def bench_bare(scorer, groups, repeats: int) -> tuple[float, float, float]:
    n_scores = sum(len(r) for _, r in groups)

    def grouped():  # all groups in one call, as the pool merges concurrent groups
        encoded = [scorer.encoder.encode_group(p, r) for p, r in groups]
        return [s for scores in scorer.score_groups_with_spread(encoded)[0] for s in scores]

    def separate():
        return [s.score for s in scorer.score([p for p, r in groups for _ in r], [x for _, r in groups for x in r])]

    # fp32 reduction order differs between layouts: the difference is relative to the reward's size.
    difference = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(grouped(), separate()))
    if difference > 1e-5:
        raise SystemExit(f"group scores differ from separate scores by {difference:.2e} (relative)")
    return n_scores / timed(grouped, repeats), n_scores / timed(separate, repeats), difference


def bench_http(url: str, groups, repeats: int) -> tuple[float, float]:
    import httpx

    n_scores = sum(len(r) for _, r in groups)
    with httpx.Client(base_url=url, timeout=600) as http:
        def grouped():
            for p, r in groups:
                http.post("/score_group", json={"prompt": p, "responses": r}).raise_for_status()

        def separate():
            for p, r in groups:
                http.post("/score", json={"prompts": [p] * len(r), "responses": r}).raise_for_status()

        return n_scores / timed(grouped, repeats), n_scores / timed(separate, repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: random Llama h256 l4)")
    parser.add_argument("--sizes", default="4,8,16")
    parser.add_argument("--groups", type=int, default=8, help="groups per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--no-pool", action="store_true", help="bare scorer rows only")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args(argv)

    import torch

    from rlhf_rm.checkpoint.scorer import RewardScorer

    torch.set_num_threads(args.torch_threads)
    checkpoint = args.checkpoint or build_bench_checkpoint(Path(tempfile.mkdtemp(prefix="group_bench_")), 256, 4)
    scorer = RewardScorer(checkpoint)
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = []
    pool_url = None if args.no_pool else start_pool(checkpoint, args)
    for n in sizes:
        groups = groups_of(n, args.groups)
        grouped, separate, difference = bench_bare(scorer, groups, args.repeats)
        row = {"n": n, "bare_group_scores_per_s": grouped, "bare_separate_scores_per_s": separate,
               "bare_ratio": grouped / separate, "max_relative_difference": difference}
        if pool_url:
            http_grouped, http_separate = bench_http(pool_url, groups, args.repeats)
            row.update(http_group_scores_per_s=http_grouped, http_separate_scores_per_s=http_separate,
                       http_ratio=http_grouped / http_separate)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| n | bare: group / separate scores/s | × | HTTP: /score_group / /score scores/s | × |")
    print("|---|---|---|---|---|")
    for r in rows:
        http = (f"{r['http_group_scores_per_s']:.1f} / {r['http_separate_scores_per_s']:.1f} | {r['http_ratio']:.2f}×"
                if "http_ratio" in r else "– | –")
        print(f"| {r['n']} | {r['bare_group_scores_per_s']:.1f} / {r['bare_separate_scores_per_s']:.1f} "
              f"| {r['bare_ratio']:.2f}× | {http} |")
    return 0


def start_pool(checkpoint: str, args) -> str:
    import ray

    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start(ServeConfig(app_name="group_bench", port=args.port, num_replicas=1, num_cpus_per_replica=1,
                      torch_threads=args.torch_threads, token_env=None, live=LiveSettings(checkpoint=checkpoint)))
    return f"http://127.0.0.1:{args.port}"


if __name__ == "__main__":
    raise SystemExit(main())
