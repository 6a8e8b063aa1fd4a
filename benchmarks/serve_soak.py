"""Sustained load on the pool (`python benchmarks/serve_bench.py --soak 600`): replica memory growth and errors.

Two replicas; `--soak-callers` callers (half through the DeploymentHandle, half plain HTTP without retries)
send single texts and groups over every route for SECONDS. Each replica's RSS is sampled every 10 s; growth
is measured from the first sample after a warm-up (a tenth of the run, at least 20 s; allocator and caches
settle) to the last. Target: under 5 %, no errors.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time

ROUTES = ("/score", "/get_reward", "/classify", "/v1/embeddings", "/score_group")


def soak(args, checkpoint: str, prompts: list, responses: list) -> int:
    import httpx
    import psutil
    import ray
    from ray import serve

    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig

    ray.init(num_cpus=os.cpu_count() + 2, include_dashboard=False, log_to_driver=False)
    os.environ.pop("RLHF_RM_SERVE_TOKEN", None)
    config = ServeConfig(app_name="rm_soak", port=args.port, num_replicas=2, num_cpus_per_replica=0.5,
                         torch_threads=args.threads, live=LiveSettings(checkpoint=checkpoint))
    handle = start(config)
    url = f"http://127.0.0.1:{args.port}"
    pids = replica_pids(url)
    warmup_s = max(20.0, args.soak / 10)
    samples: dict[int, list] = {pid: [] for pid in pids}
    counts: collections.Counter = collections.Counter()

    def sample(elapsed: float) -> None:
        for pid in pids:
            samples[pid].append((elapsed, psutil.Process(pid).memory_info().rss / 2**20))

    async def caller(index: int, http, deadline: float) -> None:
        i = index
        while time.perf_counter() < deadline:
            kind = "handle" if index % 2 == 0 else ROUTES[i % len(ROUTES)]
            try:
                await one_call(kind, handle, http, prompts[i % len(prompts)], responses, i)
                counts[f"{kind} ok"] += 1
            except Exception as error:  # noqa: BLE001 - counted, the run goes on
                counts[f"{kind} error {type(error).__name__}: {str(error)[:80]}"] += 1
            i += args.soak_callers

    async def run() -> float:
        start_time = time.perf_counter()
        deadline = start_time + args.soak
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            tasks = [asyncio.create_task(caller(i, http, deadline)) for i in range(args.soak_callers)]
            while time.perf_counter() < deadline:
                sample(time.perf_counter() - start_time)
                await asyncio.sleep(min(10.0, max(0.0, deadline - time.perf_counter())))
            await asyncio.gather(*tasks)
            sample(time.perf_counter() - start_time)
        return time.perf_counter() - start_time

    elapsed = asyncio.run(run())
    serve.shutdown()
    ray.shutdown()
    return report(args, elapsed, warmup_s, samples, counts)


async def one_call(kind: str, handle, http, prompt: str, responses: list, i: int) -> None:
    response = responses[i % len(responses)]
    if kind == "handle":
        await handle.score.remote([prompt], [response])
        return
    if kind == "/score_group":
        body = {"prompt": prompt, "responses": [responses[(i + k) % len(responses)] for k in range(4)],
                "advantages": "grpo"}
    elif kind == "/score":
        body = {"prompts": [prompt], "responses": [response]}
    elif kind == "/get_reward":
        body = {"query": [prompt + response], "prompts": [prompt]}
    elif kind == "/classify":
        body = {"model": "rm", "text": [prompt + response]} if i % 2 else {"model": "rm", "input": [prompt + response]}
    else:
        body = {"model": "rm", "input": [prompt + response]}
    reply = await http.post(kind, json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"HTTP {reply.status_code}")


def replica_pids(url: str) -> list[int]:
    import httpx

    seen = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(100):
            info = http.get("/info").json()
            seen[info["replica"]] = info["pid"]
            if len(seen) == 2:
                return list(seen.values())
    raise RuntimeError(f"found only replicas {seen}")


def report(args, elapsed: float, warmup_s: float, samples: dict, counts: collections.Counter) -> int:
    ok = sum(n for key, n in counts.items() if key.endswith(" ok"))
    errors = {key: n for key, n in counts.items() if not key.endswith(" ok")}
    print(f"\nsoak: {elapsed:.0f} s, {args.soak_callers} callers, {ok} requests answered ({ok / elapsed:.1f}/s), "
          f"{sum(errors.values())} errors; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for key, n in sorted(errors.items()):
        print(f"  error: {n} x {key}")
    print("\n| replica pid | RSS after warm-up MiB | RSS at end MiB | max MiB | growth |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for pid, points in samples.items():
        settled = [mb for t, mb in points if t >= warmup_s] or [points[-1][1]]
        growth = (settled[-1] - settled[0]) / settled[0]
        worst = max(worst, growth)
        print(f"| {pid} | {settled[0]:.0f} | {settled[-1]:.0f} | {max(mb for _, mb in points):.0f} | {growth:+.1%} |")
    print(f"\nrequests per route: " + ", ".join(f"{k[:-3]} {n}" for k, n in sorted(counts.items()) if k.endswith(" ok")))
    verdict = worst < 0.05 and not errors
    print(f"target (growth < 5 %, no errors): {'met' if verdict else 'NOT met'} (worst growth {worst:+.1%})")
    return 0 if verdict else 1
