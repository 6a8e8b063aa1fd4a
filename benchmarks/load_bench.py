"""The pool under a rollout fleet's load, driven by Locust (headless): capacity, then 2x and 4x past it.

    python benchmarks/load_bench.py                      # SmolLM2-135M with an untrained head, full run
    python benchmarks/load_bench.py --checkpoint CKPT    # a trained checkpoint (same compute per text)
    python benchmarks/load_bench.py --tiny --quick       # a tiny random model and short levels: a smoke run
    python benchmarks/load_bench.py merge                # the markdown table of benchmarks/results/load/*.json

Callers (benchmarks/locustfile.py) each post 16 HH texts to /get_reward, 30 s timeout, honouring
Retry-After. Capacity: closed-loop users (each calls again at once) are stepped 1, 2, 4, ... and capacity is the
best goodput (calls/s) of a step whose admitted p99 is <= --p99-target (1 s), or one caller's rate when even
one is over it. Overload levels offer --multiples (2x, 4x) of that rate for --level-s (60 s) each, as a fleet of
rollout workers that each call once per --pace-s (10 s; the generation between two reward calls) from a random
offset: users = multiple x capacity calls/s x pace, rounded, and the pace then set to offer exactly that. A worker whose answer takes longer than the pace calls
again at once, as a real one would. Per level: goodput (scores/s, calls/s of 2xx), shed % (503), timeouts, dropped connections and other
errors, p50/p99 of admitted calls, peak replica RSS, replicas, and how long the pool took afterwards to answer a
one-text call within a second. Once with one replica, once with autoscaling 1 -> 2 replicas (same users).
Without --checkpoint the SmolLM2 backbone gets a random (untrained) head: the compute per text is the one of a
trained checkpoint, only the scores differ. Rows go to benchmarks/results/load/ as JSON with the seed, git
commit, load average and device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "load"
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
HH_TRAIN = Path("/work/shared/data/hh-rlhf-harmless/train.jsonl")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a reward checkpoint (default: SmolLM2-135M, untrained head)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model built in code (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="short steps and levels (end-to-end check)")
    parser.add_argument("--data", default=str(HH_TRAIN), help="HH-RLHF JSON Lines (chosen/rejected texts)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="tokens per text of the exported SmolLM2 checkpoint (training's default, 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts-per-call", type=int, default=16)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="each caller's timeout (slime's, POLAR's)")
    parser.add_argument("--p99-target", type=float, default=1.0, help="admitted p99 (s) that defines capacity")
    parser.add_argument("--max-users", type=int, default=64, help="the capacity search stops here")
    parser.add_argument("--step-s", type=float, default=None,
                        help="seconds per capacity step (60, several SmolLM2 calls of 16 texts; quick 8)")
    parser.add_argument("--level-s", type=float, default=None, help="seconds per overload level (60; quick 12)")
    parser.add_argument("--multiples", default="2,4", help="overload levels, as multiples of capacity's users")
    parser.add_argument("--pace-s", type=float, default=None,
                        help="overload levels: seconds between a worker's calls (10; quick 3)")
    parser.add_argument("--modes", default="fixed,autoscale", help="fixed (1 replica) and/or autoscale (1 -> 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--out", default=None, help="result file (default: benchmarks/results/load/<model>-seed<n>.json)")
    args = parser.parse_args(argv)
    args.step_s = args.step_s or (8.0 if args.quick else 60.0)
    args.level_s = args.level_s or (12.0 if args.quick else 60.0)
    args.pace_s = args.pace_s or (3.0 if args.quick else 10.0)
    args.multiples = [float(m) for m in args.multiples.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - {"fixed", "autoscale"}
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; choose fixed and/or autoscale")
    return args


# -- model and texts ------------------------------------------------------------------------------
def export_checkpoint(args) -> tuple[str, str]:
    """(checkpoint, model description): --checkpoint as given, a tiny random model, or SmolLM2-135M with an
    untrained head saved once under the rlhf_rm cache."""
    if args.checkpoint:
        return args.checkpoint, f"checkpoint {Path(args.checkpoint).name}"
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from serve_bench import build_bench_checkpoint

        return build_bench_checkpoint(Path(tempfile.mkdtemp(prefix="load_bench_")), 64, 2), "tiny random Llama h64 l2"
    import torch

    from rlhf_rm.backbone import cache_root, resolve_backbone
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.model import load_reward_model, load_tokenizer

    target = cache_root() / "load_bench" / f"smollm2-135m-untrained-head-{args.max_length}"
    description = f"SmolLM2-135M-Instruct, untrained head, max_length {args.max_length}"
    if (target / "rlhf_rm.json").exists():
        return str(target), description
    backbone = resolve_backbone("smollm2-135m-instruct")
    tokenizer = load_tokenizer(backbone)
    torch.manual_seed(0)
    model = load_reward_model(backbone, tokenizer)
    meta = {"base_model": "smollm2-135m-instruct (untrained head)", "max_length": args.max_length}
    return str(export_checkpoint(model, tokenizer, target, meta)), description


def load_texts(path: str, seed: int, n: int = 1024) -> list[str]:
    """Full HH conversations (chosen and rejected), shuffled with the seed; a caller's call takes 16 in a row."""
    texts = []
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from None
            texts += [row[key] for key in ("chosen", "rejected") if isinstance(row.get(key), str) and row[key]]
    if not texts:
        raise ValueError(f"{path}: no 'chosen'/'rejected' texts")
    random.Random(seed).shuffle(texts)
    return texts[:n]


# -- the pool -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_pool(args, checkpoint: str, mode: str, app_name: str) -> str:
    """Deploy the pool (Ray already up); returns its URL once a one-text call is answered."""
    import httpx

    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig

    os.environ.pop("RLHF_RM_SERVE_TOKEN", None)
    scaling = {"num_replicas": 1} if mode == "fixed" else {"autoscaling": {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
        "upscale_delay_s": 3, "downscale_delay_s": 600, "metrics_interval_s": 1, "look_back_period_s": 3}}
    port = free_port()
    config = ServeConfig(app_name=app_name, port=port, num_cpus_per_replica=1, torch_threads=args.threads,
                         live=LiveSettings(checkpoint=checkpoint), **scaling)
    start(config)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=120) as http:
        http.post("/score", json={"responses": ["warm-up"]}).raise_for_status()
    return url


class ReplicaSampler:
    """Peak RSS per replica process and the most replicas seen, sampled every second on a thread (the
    replicas' process title names the app: `ray::ServeReplica:<app>:...`)."""

    def __init__(self, app_name: str):
        self.marker = f"ServeReplica:{app_name}:"
        self.peak_mb: dict[int, float] = {}
        self.most_replicas = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def replicas(self) -> list:
        import psutil

        found = []
        for process in psutil.process_iter(["cmdline"]):
            if self.marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            processes = self.replicas()
            self.most_replicas = max(self.most_replicas, len(processes))
            for process in processes:
                try:
                    rss = process.memory_info().rss / 2**20
                except Exception:  # noqa: BLE001 - a replica that just went away
                    continue
                self.peak_mb[process.pid] = max(self.peak_mb.get(process.pid, 0.0), rss)
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


# -- one level --------------------------------------------------------------------------------------
def run_locust(args, url: str, users: int, seconds: float, texts_file: str, workdir: Path,
               pace_s: float) -> list[dict]:
    """Locust headless for `seconds` with `users` callers, all started at once; returns its per-call records.
    Calls still in flight at the end may finish (up to the client timeout) and are counted."""
    out = workdir / f"records-{users}-{time.time_ns()}.jsonl"
    env = {**os.environ, "LOAD_BENCH_TEXTS": texts_file, "LOAD_BENCH_OUT": str(out),
           "LOAD_BENCH_TIMEOUT_S": str(args.timeout_s), "LOAD_BENCH_TEXTS_PER_CALL": str(args.texts_per_call),
           "LOAD_BENCH_SEED": str(args.seed), "LOAD_BENCH_PACE_S": str(pace_s)}
    locust = Path(sys.executable).with_name("locust")
    command = [str(locust), "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", str(users), "-r", str(users),
               "-t", f"{max(1, round(seconds))}s", "--stop-timeout", str(int(args.timeout_s) + 5), "--only-summary",
               "--loglevel", "ERROR"]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=seconds + args.timeout_s + 120)
    if not out.exists():
        raise RuntimeError(f"locust wrote no records (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in out.read_text().splitlines()]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(records: list[dict], seconds: float, texts_per_call: int) -> dict:
    """Goodput counts 2xx answers that arrived within the level's `seconds`; outcomes count every call."""
    if not records:
        return {"calls": 0}
    began = min(r["start"] for r in records)
    ok = [r for r in records if r["outcome"] == "ok"]
    in_time = [r for r in ok if r["end"] <= began + seconds]
    admitted = [r["end"] - r["start"] for r in ok]
    count = {kind: sum(r["outcome"] == kind for r in records) for kind in ("ok", "shed", "timeout", "dropped",
                                                                            "other")}
    return {"calls": len(records), **count,
            "goodput_calls_s": len(in_time) / seconds, "goodput_scores_s": len(in_time) * texts_per_call / seconds,
            "shed_pct": 100.0 * count["shed"] / len(records),
            "shed_without_retry_after": sum(r["outcome"] == "shed" and not r["retry_after"] for r in records),
            "other_statuses": sorted({r["status"] for r in records if r["outcome"] == "other"}),
            "p50_s": percentile(admitted, 0.50), "p99_s": percentile(admitted, 0.99)}


def recovery_s(url: str, limit_s: float = 150.0) -> float | None:
    """Seconds after a level until a one-text call is answered within 1 s (dead work still queued shows
    here); None if it never was within `limit_s`."""
    import httpx

    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=limit_s) as http:
        while time.monotonic() - started < limit_s:
            sent = time.monotonic()
            try:
                ok = http.post("/score", json={"responses": ["Is the pool back?"]}).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok and time.monotonic() - sent <= 1.0:
                return round(time.monotonic() - started, 1)
            time.sleep(0.5)
    return None


def level(args, url: str, app_name: str, users: int, seconds: float, texts_file: str, workdir: Path,
          name: str, pace_s: float = 0.0) -> dict:
    load_before = os.getloadavg()
    with ReplicaSampler(app_name) as sampler:
        records = run_locust(args, url, users, seconds, texts_file, workdir, pace_s)
    row = {"level": name, "users": users, "pace_s": pace_s, "seconds": seconds,
           **summarize(records, seconds, args.texts_per_call),
           "replica_rss_mb": [round(v) for v in sampler.peak_mb.values()], "replicas": sampler.most_replicas,
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    row["recovery_s"] = recovery_s(url)
    print(f"  {name:>10}: {format_row(row)}", flush=True)
    return row


def format_row(row: dict) -> str:
    def ms(value):
        return "-" if value is None else f"{value * 1000:.0f} ms"

    return (f"{row['users']} users, {row.get('goodput_scores_s', 0):.1f} scores/s "
            f"({row.get('goodput_calls_s', 0):.2f} calls/s), shed {row.get('shed_pct', 0):.0f} %, "
            f"timeouts {row.get('timeout', 0)}, dropped {row.get('dropped', 0)}, other {row.get('other', 0)}, "
            f"p50 {ms(row.get('p50_s'))}, p99 {ms(row.get('p99_s'))}, rss {row['replica_rss_mb']} MB, "
            f"replicas {row['replicas']}, back in {row['recovery_s']} s")


# -- capacity and the run -----------------------------------------------------------------------------
def find_capacity(args, url: str, app_name: str, texts_file: str, workdir: Path) -> tuple[list[dict], dict]:
    """Step users 1, 2, 4, ... until the admitted p99 passes the target (or calls fail); capacity is the step
    with the best goodput within the target. When even one caller is over it, capacity is one caller."""
    steps, users = [], 1
    while users <= args.max_users:
        row = level(args, url, app_name, users, args.step_s, texts_file, workdir, f"step {users}")
        steps.append(row)
        failed = row.get("timeout", 0) + row.get("dropped", 0) + row.get("other", 0)
        if row.get("p99_s") is None or row["p99_s"] > args.p99_target or failed:
            break
        users *= 2
    within = [s for s in steps if s.get("p99_s") is not None and s["p99_s"] <= args.p99_target
              and not (s.get("timeout", 0) + s.get("dropped", 0) + s.get("other", 0))]
    best = max(within, key=lambda s: s["goodput_calls_s"]) if within else steps[0]
    capacity = {"users": best["users"], "scores_s": best["goodput_scores_s"], "calls_s": best["goodput_calls_s"],
                "p99_s": best["p99_s"], "within_target": bool(within),
                "one_caller_calls_s": steps[0].get("goodput_calls_s")}
    return steps, capacity


def run_mode(args, mode: str, checkpoint: str, texts_file: str, workdir: Path, capacity: dict | None):
    from ray import serve

    app_name = f"load_bench_{os.getpid()}_{mode}"
    print(f"\n{mode}: starting the pool", flush=True)
    url = start_pool(args, checkpoint, mode, app_name)
    try:
        steps = []
        if capacity is None:
            steps, capacity = find_capacity(args, url, app_name, texts_file, workdir)
            print(f"  capacity: {capacity}", flush=True)
            if not capacity["calls_s"]:
                error = (f"one caller alone got no answer within {args.timeout_s:g} s in a {args.step_s:g} s step: "
                         "no capacity to scale the overload levels from")
                return {"mode": mode, "steps": steps, "levels": [], "error": error}, capacity
        rows = []
        for multiple in args.multiples:
            # Whole users at about --pace-s each, the pace then set so that they offer exactly multiple x capacity.
            offered = multiple * capacity["calls_s"]
            users = max(1, round(offered * args.pace_s))
            rows.append(level(args, url, app_name, users, args.level_s, texts_file, workdir, f"{multiple:g}x",
                              users / offered))
    finally:
        serve.shutdown()
    return {"mode": mode, "steps": steps, "levels": rows}, capacity


def environment(args, model: str, checkpoint: str) -> dict:
    import ray
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"seed": args.seed, "git_commit": commit + ("+dirty" if dirty else ""), "model": model,
            "checkpoint": checkpoint, "device": f"cpu: {cpu}, {os.cpu_count()} cores", "torch_threads": args.threads,
            "texts_per_call": args.texts_per_call, "timeout_s": args.timeout_s, "p99_target_s": args.p99_target,
            "step_s": args.step_s, "level_s": args.level_s, "pace_s": args.pace_s, "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "ray": ray.__version__,
            "torch": torch.__version__, "locust": _locust_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def _locust_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("locust")


def start_ray(attempts: int = 3) -> None:
    """A Ray of its own (own temp dir): never joins, nor is joined by, another cluster on this machine. Ray gives
    its raylet a fixed time to register, which a busy machine can miss: tried again."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                     _temp_dir=tempfile.mkdtemp(prefix="lb_ray_", dir="/tmp"))
            return
        except Exception:  # noqa: BLE001 - retried, then raised
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge(argv[1:])
    args = parse_args(argv)
    import ray

    checkpoint, model = export_checkpoint(args)
    workdir = Path(tempfile.mkdtemp(prefix="load_bench_"))
    texts_file = workdir / "texts.json"
    texts_file.write_text(json.dumps(load_texts(args.data, args.seed)))
    result = {"environment": environment(args, model, checkpoint), "runs": []}
    print(f"model: {model}; load average {result['environment']['load_average_start']}", flush=True)
    start_ray()
    capacity = None
    try:
        for mode in args.modes:
            run, capacity = run_mode(args, mode, checkpoint, str(texts_file), workdir, capacity)
            result["runs"].append({**run, "capacity": capacity})
            if "error" in run:  # saved as the outcome (the "before" of a fix, say); nothing to run after it
                result["error"] = run["error"]
                break
    finally:
        ray.shutdown()
    result["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    name = ("tiny" if args.tiny else "checkpoint" if args.checkpoint else "smollm2") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / f"{name}-seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}\n")
    print(table([result]))
    if "error" in result:
        print(f"\nstopped: {result['error']}", file=sys.stderr)
        return 1
    return 0


# -- merge: the markdown table ------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    """One markdown row per level of every run: capacity steps, then the overload levels."""
    head = ("| model | replicas | level | users | goodput scores/s (calls/s) | × one caller | shed % (no Retry-After) "
            "| timeouts | dropped / other | p50 / p99 admitted | replica RSS MB | back within 1 s after | load avg |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for result in results:
        env = result["environment"]
        for run in result["runs"]:
            one = run["capacity"].get("one_caller_calls_s") or None
            replicas = "1" if run["mode"] == "fixed" else "autoscale 1→2"
            for row in run["steps"] + run["levels"]:
                lines.append(_table_row(env, replicas, row, one))
    return "\n".join(lines)


def _table_row(env: dict, replicas: str, row: dict, one_caller_calls_s: float | None) -> str:
    def seconds(value):
        return "–" if value is None else f"{value:.2f} s"

    ratio = f"{row['goodput_calls_s'] / one_caller_calls_s:.2f}×" if one_caller_calls_s and "goodput_calls_s" in row \
        else "–"
    back = "never" if row.get("recovery_s") is None else f"{row['recovery_s']} s"
    users = f"{row['users']} (1 call / {row['pace_s']:.3g} s: {row['users'] / row['pace_s']:.3g} calls/s)" \
        if row.get("pace_s") else f"{row['users']} (closed loop)"
    return (f"| {env['model'].split(',')[0]} | {replicas} (seen {row['replicas']}) | {row['level']} | {users} "
            f"| {row.get('goodput_scores_s', 0):.1f} ({row.get('goodput_calls_s', 0):.2f}) | {ratio} "
            f"| {row.get('shed_pct', 0):.0f} ({row.get('shed_without_retry_after', 0)}) | {row.get('timeout', 0)} "
            f"| {row.get('dropped', 0)} / {row.get('other', 0)} | {seconds(row.get('p50_s'))} / "
            f"{seconds(row.get('p99_s'))} | {', '.join(map(str, row['replica_rss_mb'])) or '–'} | {back} "
            f"| {row['load_average_before'][0]:.1f} |")


def merge(paths: list[str]) -> int:
    files = [Path(p) for p in paths] or sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no result files under {RESULTS}", file=sys.stderr)
        return 1
    results = [json.loads(f.read_text()) for f in files]
    for f, result in zip(files, results):
        env = result["environment"]
        print(f"<!-- {f.name}: {env['model']}; {env['device']}; commit {env['git_commit']}; seed {env['seed']}; "
              f"{env['date']}; load average {env['load_average_start']} -> {env.get('load_average_end')}"
              f"{'; stopped: ' + result['error'] if 'error' in result else ''} -->")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
