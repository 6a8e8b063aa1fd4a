"""Scale run: a synthetic multi-million-pair Parquet file, prepared and streamed (data.streaming=true).

1. writes N synthetic preference pairs (prompt / chosen / rejected, short texts; seeded) as one Parquet
   file with row groups of 50k rows, plus a few repeated rows so deduplication has work to do;
2. runs `python -m rlhf_rm.train data.streaming=true trainer.max_steps=S` on it with the default backbone,
   sampling every process of the run (driver, Ray Data actors and tasks, Ray Train workers, raylet) with
   psutil twice a second;
3. prints the data summary, wall time and the peak memory per process role (private memory outside the
   object store: what the process itself holds; object-store pages it alone touched; RSS), so the memory
   bound (no process holds the whole set) is a measured figure. A second run reuses the prepared shards
   (cache hit) and only trains;
4. with --baseline-rows N, trains the same steps in memory (data.streaming=false, data.limit=N) on the same
   file, sampled the same way, so the streamed figures have a reference from the same machine and settings.

    python benchmarks/scale_data.py --rows 2000000 --steps 5 --baseline-rows 20000 [--out outputs/scale]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl"
WORDS = ("the a river model answer question kindly helpful safe because data train reward policy value "
         "human assistant prefer choose better worse long short clear wrong right maybe please thanks").split()


def write_synthetic(path: Path, rows: int, seed: int = 0, repeats: int = 1000) -> None:
    """Short random texts, one row group per 50k rows; the last `repeats` rows repeat the first ones."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    chunk, head, writer = 50_000, None, None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)

        def texts(length: int) -> list[str]:
            return [" ".join(row) for row in words[rng.integers(0, len(words), size=(n, length))]]

        table = pa.table({"prompt": [f"\n\nHuman: #{start + i} {t}?" for i, t in enumerate(texts(12))],
                          "chosen": [f" {t}." for t in texts(16)], "rejected": [f" {t}!" for t in texts(10)]})
        if head is None:
            head = table.slice(0, min(repeats, n))
        if start + n >= rows and rows > len(head):
            table = pa.concat_tables([table.slice(0, n - len(head)), head])
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=chunk)
    writer.close()


def kind_of(process) -> str:
    """What a process is doing now, from its title: Ray names a worker `ray::<task or actor>` while it
    runs one (`ray::IDLE` between tasks), so a pooled worker is counted under the role it holds."""
    try:
        title = " ".join(process.cmdline())
    except Exception:  # noqa: BLE001 -- a process that just exited
        return "gone"
    for marker, name in (("RayTrainWorker", "Ray Train worker"), ("PrepareUnits", "Ray Data prepare actor"),
                         ("_read_shards", "Ray Data shard reader task"),
                         ("SplitCoordinator", "Ray Data split coordinator"),
                         ("MapWorker", "Ray Data actor"), ("ReadParquet", "Ray Data read task"),
                         ("ray::IDLE", "idle Ray worker"),
                         ("raylet", "raylet"), ("gcs_server", "gcs_server"), ("rlhf_rm.train", "driver"),
                         ("TrainController", "Ray Train controller"), ("dashboard", "dashboard")):
        if marker in title:
            return name
    return "other Ray worker" if "ray::" in title or "default_worker" in title else "other"


def private_memory(process) -> tuple[int, int]:
    """(private bytes outside the object store, private bytes of object-store pages).

    Every Ray process maps the shared object store (a /dev/shm `plasma` file). A store page that only this
    process has touched counts as private in /proc/PID/smaps, so plain USS charges a process for the
    objects it wrote or read there, up to the store's size, however little it holds itself."""
    own = store = 0
    for mapping in process.memory_maps(grouped=True):
        private = mapping.private_clean + mapping.private_dirty
        if "plasma" in mapping.path:
            store += private
        else:
            own += private
    return own, store


def sample(root_pid: int, stop: threading.Event, peaks: dict) -> None:
    import psutil

    root = psutil.Process(root_pid)
    while not stop.is_set():
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in processes:
            try:
                own, store = private_memory(process)
                rss = process.memory_info().rss
                name = kind_of(process)
            except psutil.Error:
                continue
            for measure, value in (("private", own), ("store", store), ("rss", rss)):
                peaks[measure][name] = max(peaks[measure][name], value)
        time.sleep(0.5)


def run_sampled(command: list[str]) -> tuple[int, dict, float]:
    """Run a training command, sampling its process tree; (exit code, peak bytes per measure and process
    role, wall seconds)."""
    print("$", " ".join(command), flush=True)
    peaks = {measure: defaultdict(int) for measure in ("private", "store", "rss")}
    stop = threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    sampler = threading.Thread(target=sample, args=(process.pid, stop, peaks), daemon=True)
    sampler.start()
    code = process.wait()
    stop.set()
    sampler.join()
    return code, peaks, time.perf_counter() - started


def report(run_dir: Path, rows: int, peaks: dict, wall: float) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = metrics["data"]["train"]

    def mib(measure: str) -> dict:
        return {name: round(value / 2**20) for name, value in sorted(peaks[measure].items(), key=lambda kv: -kv[1])
                if value}

    return {"rows": rows, "wall_s": round(wall, 1), "train_steps": metrics["train_steps"],
            "train_seconds": round(metrics["train_seconds"], 1),
            "rows_read": summary["rows_read"], "used": summary["used"], "deduplicated": summary["deduplicated"],
            "quarantined": summary["quarantined"], "units": summary.get("units"),
            "cache_hit": summary["cache"]["hit"],
            # private memory outside the object store: what the process itself holds
            "peak_private_mib": mib("private"),
            # object-store pages only this process had touched (bounded by the store's size, not the data's)
            "peak_private_store_pages_mib": mib("store"),
            "peak_rss_mib": mib("rss")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--baseline-rows", type=int, default=0,
                        help="also train the same steps in memory (data.streaming=false) on this many rows of "
                             "the same file, sampled the same way: what streaming adds or saves per process")
    parser.add_argument("--out", default="outputs/scale")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"synthetic_{args.rows}.parquet"
    started = time.perf_counter()
    if not data.exists():
        write_synthetic(data, args.rows)
    print(f"data: {data} ({data.stat().st_size / 2**20:.0f} MiB, {args.rows:,} rows) "
          f"written in {time.perf_counter() - started:.0f}s", flush=True)

    common = [sys.executable, "-m", "rlhf_rm.train", f"data.train={data}", f"data.dev={DEV}", "data.dev_limit=64",
              f"trainer.max_steps={args.steps}", "trainer.num_workers=2", "logger=none",
              f"trainer.storage_path={out / 'ray'}", *args.overrides]
    results = {}
    runs = [("streamed", out / "run", ["data.streaming=true"], args.rows)]
    if args.baseline_rows:
        runs.append(("in_memory", out / "run_in_memory", ["data.streaming=false", f"data.limit={args.baseline_rows}"],
                     args.baseline_rows))
    for name, run_dir, extra, rows in runs:
        code, peaks, wall = run_sampled([*common, *extra, f"hydra.run.dir={run_dir}"])
        if code != 0:
            print(f"{name} training exited with {code}", flush=True)
            return code
        results[name] = report(run_dir, rows, peaks, wall)
    print(json.dumps(results, indent=2))
    (out / "scale_result.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
