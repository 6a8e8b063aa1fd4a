"""Training sets too large for one process (data.streaming=true): prepared once, then streamed.

Prepare (once per data + tokenizer + options; cached under $RLHF_RM_CACHE/tokenized/stream-<key>/):
the train sources are cut into units (a file, or a slice of a large JSONL / Parquet / Arrow file), and a
Ray Data actor pool reads, validates and tokenizes each unit into one Parquet shard, with the same
row-level rules as the in-memory loader (load_examples): quarantine lines, exact row accounting, dev
overlap. Each unit returns its counts and 64-bit example keys; the driver then removes repeats across
units (first occurrence wins), adds up the report, and with on_error=raise stops at the first bad row
— all before training starts. A manifest written last makes the entry reusable.

Train: ray.data.read_parquet(shards) minus the repeats, split across the Ray Train workers
(get_dataset_shard); no process holds the whole set. Workers pack what arrives into token-budget
batches (batching.stream).

Where things are on a multi-node cluster: the sources are paths on the driver's node (the head, for a job),
and the cache lives on that node's disk. So the preparation actors and the shard readers run on the driver's
node (`on_driver_node`), and only encoded blocks travel, through Ray's object store, to the training workers on
other nodes: nothing is read from a node that lacks the files.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rlhf_rm.batching.arrow import groups_to_table
from rlhf_rm.batching.collate import LAYOUTS
from rlhf_rm.batching.planner import row_length
from rlhf_rm.config import DataConfig
from rlhf_rm.data.load import DataError, DataReport, example_key, load_examples
from rlhf_rm.data.readers import Part, expand_paths, plan_parts
from rlhf_rm.prepare.summary import split_summary

MANIFEST = "manifest.json"


@dataclass
class StreamedSplit:
    """A prepared training split: shard files, example ids to leave out (repeats), and its summary."""

    shards: list[str]
    dropped: np.ndarray  # example ids (unit << 32 | position) removed as repeats across units
    summary: dict
    kinds: set
    labels: set
    tokens: dict  # layout -> tokens of all kept examples in that layout (sizes the LR schedule)

    def dataset(self, readers: int = 2):
        """The Ray Dataset of encoded groups, read shard by shard as the workers consume it."""
        import ray.data

        # Reading shards is light I/O done in zero-CPU tasks: Ray Train workers often hold every CPU of a
        # node (one each), and a read that waits for a free CPU would never start. Zero-CPU tasks are not
        # limited by CPUs either, so `readers` caps how many run at once (each reads ~10k rows/s). They run
        # where the shards are: the driver's node.
        return ray.data.from_items([{"shard": shard} for shard in self.shards]).map_batches(
            _read_shards, fn_kwargs={"dropped": self.dropped}, batch_size=1, num_cpus=0, concurrency=readers,
            **on_driver_node())


def on_driver_node() -> dict:
    """Ray options that keep a task or actor on this process's node: the one whose disk holds the data sources
    given as paths and the prepared shards (a node-local cache). Hard affinity: run there or wait."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():  # Ray Data will start a local, one-node Ray: nothing to pin
        return {}
    node_id = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}


def _read_shards(batch: dict, dropped: np.ndarray):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in batch["shard"]:
        for record_batch in pq.ParquetFile(str(shard)).iter_batches(batch_size=1024):
            ids = record_batch.column("example_id").to_numpy()
            keep = ~np.isin(ids, dropped) if len(dropped) else None
            yield pa.Table.from_batches([record_batch if keep is None or keep.all() else record_batch.filter(keep)])


def key64(hex_key: str) -> int:
    """A 32-hex-digit key (load.example_key / content_key) as a signed 64-bit integer."""
    return int(np.uint64(int(hex_key[:16], 16)).astype(np.int64))


# -- planning -------------------------------------------------------------------------------------------
def plan_units(specs: list[dict], rows_per_unit: int) -> list[dict]:
    """One unit per file slice, in source and file order (the order repeats are judged in)."""
    units = []
    for spec in specs:
        if spec["format"] != "preference":
            raise ValueError(f"data.streaming=true reads the 'preference' format (rows of pairs or rankings); "
                             f"source {spec['name']!r} is {spec['format']!r}, whose files are small: "
                             f"set data.streaming=false for it")
        if float(spec["weight"]) != 1.0:
            raise ValueError(f"source {spec['name']!r}: weights are not applied when streaming "
                             f"(data.streaming=true); give each source weight 1.0")
        for path in expand_paths(spec["path"]):
            for part in plan_parts(path, rows_per_unit):
                units.append({"index": len(units), "spec": spec, "path": str(path),
                              "part": asdict(part) if part is not None else None})
    if len(units) >= 1 << 31:
        raise ValueError(f"{len(units)} data units: raise data.rows_per_unit")
    return units


# -- one unit (runs in a Ray Data actor) ----------------------------------------------------------------
class PrepareUnits:
    """Ray Data callable class: the tokenizer is loaded once per actor, then each unit is read, validated,
    encoded and written as `unit_NNNNN.parquet` in the entry directory."""

    def __init__(self, backbone_path: str, spec: dict, options: dict, out_dir: str, dev_keys: list[str] | None):
        from rlhf_rm.batching.tokenize import ResponseEncoder
        from rlhf_rm.checkpoint.rendering import RenderingSpec
        from rlhf_rm.model import load_tokenizer

        # The driver's rendering crosses the Ray Data seam as one object: every shard is encoded exactly as
        # the in-memory splits are.
        self.encoder = ResponseEncoder(load_tokenizer(backbone_path), spec=RenderingSpec.from_dict(spec))
        self.options = options
        self.out_dir = Path(out_dir)
        self.dev_keys = frozenset(dev_keys) if dev_keys else None

    def __call__(self, batch: dict) -> dict:
        results = [self.prepare(json.loads(unit)) for unit in batch["unit"]]
        return {name: [r[name] for r in results] for name in results[0]}

    def prepare(self, unit: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        index = unit["index"]
        spec = {**unit["spec"], "path": unit["path"], "part": Part(**unit["part"]) if unit["part"] else None}
        quarantine = self.out_dir / f"unit_{index:05d}.quarantine.jsonl"
        tagged, report = load_examples([spec], on_error="skip", quarantine_path=quarantine, dev_keys=self.dev_keys,
                                       **self.options)
        groups = [self.encoder.encode_example(example, source) for source, example in tagged]
        example_ids = (np.int64(index) << 32) + np.arange(len(groups), dtype=np.int64)
        rows = {}  # input row ("path:line"; pairs cut from one ranking share it) -> unit-local row number
        row_of = np.array([rows.setdefault(example.origin, len(rows)) for _, example in tagged], dtype=np.int64)
        table = groups_to_table(groups).append_column("example_id", pa.array(example_ids, pa.int64()))
        shard = self.out_dir / f"unit_{index:05d}.parquet"
        if groups:
            pq.write_table(table, shard)
        import ray

        return {
            "index": index,
            "node": ray.get_runtime_context().get_node_id(),  # where the source was read (driver's node)
            "source": spec["name"],
            "report": json.dumps(report.as_dict()),
            "shard": str(shard) if groups else "",
            "quarantine": str(quarantine) if report.quarantine_file else "",
            "keys": np.array([key64(example_key(example)) for _, example in tagged], dtype=np.int64).tobytes(),
            "rows": row_of.tobytes(),
            "kinds": ",".join(sorted({g.kind for g in groups})),
            "all_margin": all(g.margin is not None for g in groups if g.kind == "pair"),
            "prompt_truncated": sum(g.prompt_truncated for g in groups),
            "response_truncated": sum(g.response_truncated for g in groups),
            **{f"tokens_{layout}": np.array([row_length(g, layout) for g in groups], dtype=np.int64).tobytes()
               for layout in LAYOUTS},
        }


# -- the whole split (driver) ---------------------------------------------------------------------------
def prepare_streamed_split(specs: list[dict], data: DataConfig, spec: dict, backbone_path: str, run_dir: Path,
                           entry: Path, dev_keys: frozenset | None, workers: int, reuse: bool = True) -> StreamedSplit:
    """Prepare (or, with `reuse`, find already prepared in `entry`) the shards of a streamed split; `spec`: the
    encoder's RenderingSpec as a dict, which each preparing actor builds its encoder from."""
    if data.limit is not None or any(spec["limit"] is not None for spec in specs):
        raise ValueError("data.limit (or a source's limit) is not applied when streaming (data.streaming=true): "
                         "prepare a smaller file, "
                         "or bound the run with trainer.max_steps")
    if data.length_balance.mode != "none":
        raise ValueError(f"data.length_balance.mode={data.length_balance.mode} needs the whole train split in memory;"
                         " it is not applied when streaming (data.streaming=true)")
    with _entry_lock(entry):  # another run preparing the same entry finishes first; we then reuse it
        manifest_path = entry / MANIFEST
        if reuse and manifest_path.exists():
            return _from_manifest(entry, json.loads(manifest_path.read_text()), run_dir, hit=True)

        import ray.data

        # Built under a private name and renamed into place when complete: the entry is never half written,
        # and nobody's shards are deleted while in use.
        building = entry.with_name(f"{entry.name}.building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        units = plan_units(specs, data.rows_per_unit)
        options = {"prompt_separator": data.prompt_separator, "max_row_bytes": data.max_row_bytes,
                   "dedupe": data.dedupe, "drop_dev_overlap": data.drop_dev_overlap and bool(dev_keys)}
        workers = driver_node_cpus(workers)  # the actors run where the files are: this node
        print(f"data[train]: streaming: preparing {len(units)} units with {workers} Ray Data actors on this node "
              f"(where the sources and the cache are) → {entry}", flush=True)
        results = ray.data.from_items([{"unit": json.dumps(u)} for u in units]).map_batches(
            PrepareUnits, batch_size=1, concurrency=max(1, min(workers, len(units))), num_cpus=1,
            **on_driver_node(),
            fn_constructor_kwargs={"backbone_path": backbone_path, "spec": spec, "options": options,
                                   "out_dir": str(building), "dev_keys": sorted(dev_keys) if dev_keys else None},
        ).take_all()
        results.sort(key=lambda r: r["index"])
        try:
            manifest = _aggregate(results, data.on_error, data.dedupe, building)
        except Exception:
            shutil.rmtree(building, ignore_errors=True)
            raise
        (building / MANIFEST).write_text(json.dumps(manifest))  # only a complete entry is ever reused
        shutil.rmtree(entry, ignore_errors=True)  # an incomplete (or, without reuse, older) entry
        building.rename(entry)
        return _from_manifest(entry, manifest, run_dir, hit=False)


def driver_node_cpus(wanted: int) -> int:
    """`wanted`, capped at the CPUs Ray offers on this process's node; refused when none (the preparation
    actors could never start)."""
    import ray

    if not ray.is_initialized():
        return wanted
    node_id = ray.get_runtime_context().get_node_id()
    cpus = next((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["NodeID"] == node_id), 0)
    if cpus < 1:
        raise ValueError("data.streaming=true prepares the data on the driver's node (where the sources and the "
                         "cache are), and that Ray node offers no CPU: give it at least one (cluster.yaml: the "
                         "head's `resources: {CPU: 2}`), or set data.streaming=false")
    return min(wanted, cpus)


@contextmanager
def _entry_lock(entry: Path):
    """An exclusive lock on a cache entry (a file beside it), held while the entry is checked or built;
    flock is released by the kernel if the holder dies."""
    import fcntl

    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(f"{entry.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _aggregate(results: list[dict], on_error: str, dedupe: bool, entry: Path) -> dict:
    if on_error == "raise":
        for result in results:  # in file order: the first bad row of the split
            if result["quarantine"]:
                first = json.loads(Path(result["quarantine"]).read_text(encoding="utf-8").splitlines()[0])
                raise DataError(f"{first['origin']}: {first['reason']} (set data.on_error=skip to quarantine bad rows)")
    reports = [DataReport.from_dict(json.loads(r["report"])) for r in results]
    keys, rows = _joined(results, "keys"), _joined(results, "rows")
    counts = [len(r["keys"]) // 8 for r in results]
    units = np.repeat(np.array([r["index"] for r in results], dtype=np.int64), counts)
    positions = np.concatenate([np.arange(n, dtype=np.int64) for n in counts] or [np.zeros(0, np.int64)])
    repeat = np.zeros(len(keys), dtype=bool)
    if dedupe and len(keys):
        _, first = np.unique(keys, return_index=True)
        repeat[:] = True
        repeat[first] = False
    dropped = (units[repeat] << 32) + positions[repeat]
    np.save(entry / "dropped.npy", dropped)
    # Rows whose every example turned out to repeat an earlier unit move from `used` to `deduplicated`.
    row_ids = (units << 32) + rows
    fully_repeated = np.setdiff1d(np.unique(row_ids[repeat]), np.unique(row_ids[~repeat]))
    by_unit_rows = np.bincount((fully_repeated >> 32).astype(np.int64), minlength=len(results))
    by_unit_examples = np.bincount(units[repeat], minlength=len(results))
    per_source: dict[str, DataReport] = {}
    for result, report in zip(results, reports):
        index = result["index"]
        report.used -= int(by_unit_rows[index])
        report.deduplicated += int(by_unit_rows[index])
        report.examples -= int(by_unit_examples[index])
        report.duplicate_examples += int(by_unit_examples[index])
        per_source.setdefault(result["source"], DataReport()).add(report)
    quarantine = {}
    for name in per_source:  # one quarantine file per source, units in file order
        parts = [r["quarantine"] for r in results if r["source"] == name and r["quarantine"]]
        if parts:
            target = entry / f"{name}.quarantine.jsonl"
            with open(target, "wb") as out:
                for part in parts:
                    out.write(Path(part).read_bytes())
            quarantine[name] = target.name
    if any(r.unaccounted() for r in per_source.values()):  # not an `assert`: python -O would drop it
        raise DataError(f"row accounting is off (a loader bug): { {n: r.as_dict() for n, r in per_source.items()} }")
    summary = split_summary(per_source, sum(r["prompt_truncated"] for r in results),
                            sum(r["response_truncated"] for r in results))
    summary["units"] = len(results)
    return {
        "prepared_on": sorted({r["node"] for r in results}),
        "summary": summary,
        "shards": [Path(r["shard"]).name for r in results if r["shard"]],
        "quarantine": quarantine,
        "kinds": sorted({k for r in results for k in r["kinds"].split(",") if k}),
        "all_margin": all(r["all_margin"] for r in results),
        "tokens": {layout: int(_joined(results, f"tokens_{layout}")[~repeat].sum()) for layout in LAYOUTS},
    }


def _joined(results: list[dict], name: str) -> np.ndarray:
    """The units' int64 arrays (sent as bytes) of one field, end to end in unit order."""
    return np.concatenate([np.frombuffer(r[name], dtype=np.int64) for r in results] or [np.zeros(0, np.int64)])


def _from_manifest(entry: Path, manifest: dict, run_dir: Path, hit: bool) -> StreamedSplit:
    summary = dict(manifest["summary"])
    summary["sources"] = {name: dict(report) for name, report in summary["sources"].items()}
    for name, stored in manifest["quarantine"].items():
        target = Path(run_dir) / f"quarantine_train_{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry / stored, target)
        summary["sources"][name]["quarantine_file"] = str(target)
    summary["cache"] = {"hit": hit, "path": str(entry)}
    return StreamedSplit(shards=[str(entry / name) for name in manifest["shards"]],
                         dropped=np.load(entry / "dropped.npy"), summary=summary, kinds=set(manifest["kinds"]),
                         labels={"margin"} if manifest["all_margin"] else set(), tokens=manifest["tokens"])
