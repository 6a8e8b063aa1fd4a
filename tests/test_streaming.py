"""Large inputs: files cut into slices read in parallel, directories/globs/Arrow, and the streamed split
prepared by Ray Data (row accounting, quarantine, repeats across slices, cache) and trained on."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import FIXTURES

TRAIN = FIXTURES / "hh_train_small.jsonl"


def origins(rows) -> list[tuple]:
    return [(r.origin, r.kind, json.dumps(r.value, sort_keys=True)) for r in rows]


def test_file_parts_read_exactly_the_whole_file(tmp_path):
    """JSONL byte slices, Parquet row groups and Arrow record batches: the slices together give the same
    rows with the same file:line / row numbers as one whole read, bad rows included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlhf_rm.data.readers import plan_parts, read_rows

    lines = TRAIN.read_text().splitlines()
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("\n".join(lines[:7] + ["{not json", ""] + lines[7:]) + "\n")
    rows = [json.loads(line) for line in lines]
    parquet = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=6)
    arrow = tmp_path / "big.arrow"
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=9):
            writer.write_batch(batch)
    for path in (jsonl, parquet, arrow):
        parts = plan_parts(path, 10)
        assert len(parts) > 2 and all(p is not None for p in parts), path
        assert sum(p.rows for p in parts) == (len(lines) + 2 if path == jsonl else len(lines))
        whole = origins(read_rows(path))
        sliced = [row for part in parts for row in origins(read_rows(path, part=part))]
        assert sliced == whole, path
    assert ("%s:8" % jsonl, "invalid JSON") in [(o, k) for o, k, _ in origins(read_rows(jsonl))]
    assert origins(read_rows(parquet))[-1][0] == f"{parquet}:row {len(lines)}"
    assert plan_parts(tmp_path / "big.jsonl", 10_000) == [None]  # smaller than one part: read whole


def test_directories_globs_and_arrow_are_sources(tmp_path):
    import pyarrow as pa

    from rlhf_rm.data.load import DataError, load_pairs

    lines = TRAIN.read_text().splitlines()
    shards = tmp_path / "shards"
    (shards / "deeper").mkdir(parents=True)
    (shards / "a.jsonl").write_text("\n".join(lines[:10]) + "\n")
    (shards / "deeper" / "b.jsonl").write_text("\n".join(lines[10:25]) + "\n")
    table = pa.Table.from_pylist([json.loads(line) for line in lines[25:]])
    with pa.OSFile(str(shards / "c.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (shards / "README.txt").write_text("not data")  # only data suffixes are read from a directory
    pairs, report = load_pairs(shards, dedupe=False)
    assert report.rows_read == len(lines) and len(pairs) == len(lines)
    # Files in sorted path order; each keeps its own line / row numbers.
    assert [pairs[i].origin for i in (0, 10, 24, 25, 39)] == [
        f"{shards / 'a.jsonl'}:1", f"{shards / 'c.arrow'}:row 1", f"{shards / 'c.arrow'}:row 15",
        f"{shards / 'deeper' / 'b.jsonl'}:1", f"{shards / 'deeper' / 'b.jsonl'}:15"]
    pairs, report = load_pairs(str(shards / "**" / "*.jsonl"), dedupe=False)
    assert report.rows_read == 25
    with pytest.raises(DataError, match=r"no file matches"):
        load_pairs(str(tmp_path / "nothing" / "*.jsonl"))
    with pytest.raises(DataError, match=r"file not found"):
        load_pairs(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def stream_config(train, on_error="skip"):
    from rlhf_rm.config import DataConfig

    return DataConfig(train=str(train), on_error=on_error, streaming=True, rows_per_unit=8, max_length=256)


@pytest.mark.slow
def test_streamed_split_accounts_for_every_row(tmp_path, monkeypatch, tiny_backbone, tiny_tokenizer, ray_local):
    """Slices of 8 lines prepared by a Ray Data actor pool: bad rows quarantined with file:line, repeats in
    later slices removed (first occurrence kept), rows in = used + quarantined + deduplicated, the shards
    hold exactly the kept examples, a second run reuses them, and on_error=raise names the first bad row."""
    from rlhf_rm.data.load import DataError
    from rlhf_rm.prepare import build_encoder, format_data_summary, prepare_streamed_train

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    lines = TRAIN.read_text().splitlines()
    data = tmp_path / "big.jsonl"
    bad = ['{"chosen": "a"', json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: x", "rejected": 3})]
    # 40 pairs, 2 bad rows, and 6 repeats of earlier pairs (one repeated twice), across the slices.
    body = lines[:12] + bad[:1] + lines[12:30] + [lines[2], lines[3]] + bad[1:] + lines[30:] + [lines[2], lines[20],
                                                                                                   lines[39], lines[0]]
    data.write_text("\n".join(body) + "\n")
    encoder = build_encoder(tiny_tokenizer, stream_config(data))

    prepared = prepare_streamed_train(stream_config(data), encoder, tiny_backbone, tmp_path / "run", workers=2)
    streamed, summary = prepared.streamed, prepared.summary
    assert prepared.groups is None and prepared.count == 40 and prepared.kinds == {"pair"}
    print(format_data_summary("train", summary))
    assert summary["units"] == 6 and summary["cache"]["hit"] is False
    assert summary["rows_read"] == len(body) == 48
    assert summary["quarantined"] == 2 and summary["quarantined_by_reason"] == {"invalid JSON": 1, "wrong type": 1}
    assert summary["deduplicated"] == 6 and summary["used"] == 40 and summary["examples"] == 40
    assert summary["rows_read"] == summary["used"] + summary["quarantined"] + summary["deduplicated"]
    (report,) = summary["sources"].values()
    quarantine = Path(report["quarantine_file"]).read_text().splitlines()
    assert [json.loads(line)["origin"] for line in quarantine] == [f"{data}:13", f"{data}:34"]
    rows = streamed.dataset().take_all()
    assert len(rows) == 40 and len({r["example_id"] for r in rows}) == 40
    assert streamed.tokens["prefix_shared"] == sum(len(r["prompt_ids"]) + sum(map(len, r["response_ids"]))
                                                   for r in rows)

    again = prepare_streamed_train(stream_config(data), encoder, tiny_backbone, tmp_path / "run2", workers=2)
    assert again.summary["cache"]["hit"] is True and again.summary["used"] == 40
    (report,) = again.summary["sources"].values()
    assert Path(report["quarantine_file"]).read_text().splitlines() == quarantine

    with pytest.raises(DataError, match=rf"{data}:13: invalid JSON"):
        prepare_streamed_train(stream_config(data, on_error="raise"), encoder, tiny_backbone, tmp_path / "run3",
                               workers=2)


@pytest.mark.slow
def test_streamed_two_worker_run_trains(tmp_path, monkeypatch, tiny_backbone, ray_local):
    """data.streaming=true end to end: shards → Ray Data → get_dataset_shard on 2 DDP workers → steps over
    several epochs that lower the loss, then the usual checkpoint and dev metrics; trainer.max_steps stops it."""
    from rlhf_rm.config import compose
    from rlhf_rm.train import run

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    overrides = [f"model.path={tiny_backbone}", f"data.train={TRAIN}", f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}",
                 "data.streaming=true", "data.rows_per_unit=10", "trainer.num_workers=2",
                 "batching.tokens_per_worker=1200", "trainer.lr=2e-3", "trainer.warmup_ratio=0", "trainer.log_every=1",
                 "trainer.epochs=6", "trainer.max_steps=20", "logger=none", f"trainer.storage_path={tmp_path / 'ray'}",
                 # A 2-layer random model learns 40 pairs within 20 steps reliably when it reads one fixed (EOS)
                 # token; at each text's own last token its loss often has not moved yet (a flaky check).
                 "data.append_eos=true"]
    metrics = run(compose(overrides), tmp_path / "run")
    assert metrics["data"]["train"]["units"] == 4 and metrics["data"]["train"]["used"] == 40
    assert metrics["train_steps"] == 20  # 6 epochs would be more: max_steps stops the run
    log = json.loads((Path(metrics["checkpoint"]) / "rlhf_rm.json").read_text())["metrics_log"]
    losses = [entry["train/loss"] for entry in log if "train/loss" in entry]
    assert len(losses) == 20 and max(entry["train/epoch"] for entry in log if "train/epoch" in entry) > 2
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert 0.0 <= metrics["dev_accuracy"] <= 1.0



@pytest.mark.slow  # preparation now asks Ray for the driver's node
def test_two_concurrent_preparations_of_one_entry_keep_their_shards(tmp_path, monkeypatch, tiny_backbone):
    """Two runs preparing the same streamed split share one cache entry. The second used to rmtree the
    directory while the first was still using it (its shards gone). Ray Data is replaced by an in-thread
    stand-in so the interleaving is forced: the second run starts once the first has written its shards."""
    import sys
    import threading
    import types

    import ray

    from rlhf_rm.prepare.streaming import PrepareUnits, prepare_streamed_split
    from rlhf_rm.model import load_tokenizer
    from rlhf_rm.prepare.split import build_encoder, source_specs

    first_wrote, both_prepared, calls = threading.Event(), threading.Barrier(2, timeout=3), []

    class Pipeline:
        def __init__(self, items):
            self.items = items

        def map_batches(self, fn, fn_constructor_kwargs, **_):
            self.fn = fn(**fn_constructor_kwargs)
            return self

        def take_all(self):
            calls.append(threading.current_thread().name)
            if len(calls) == 2:  # the second preparation: wait for the first to go on, then write slowly
                _wait(both_prepared)
                time.sleep(1.0)
            out = self.fn({"unit": [item["unit"] for item in self.items]})
            rows = [{name: values[i] for name, values in out.items()} for i in range(len(self.items))]
            if len(calls) == 1:
                first_wrote.set()
                _wait(both_prepared)
            return rows

    fake = types.ModuleType("ray.data")
    fake.from_items = Pipeline
    monkeypatch.setattr(ray, "data", fake, raising=False)
    monkeypatch.setitem(sys.modules, "ray.data", fake)
    assert PrepareUnits  # the real unit preparation runs, in-thread

    data = tmp_path / "train.jsonl"
    data.write_text(TRAIN.read_text())
    config = stream_config(data)
    specs = source_specs(config.train)
    spec = build_encoder(load_tokenizer(tiny_backbone), config).spec.to_dict()
    entry = tmp_path / "cache" / "stream-same-key"
    results, shards_at_return = {}, {}

    def prepare(name):
        split = prepare_streamed_split(specs, config, spec, tiny_backbone, tmp_path / name, entry, None, workers=1)
        shards_at_return[name] = [Path(s).exists() for s in split.shards]
        results[name] = split

    first = threading.Thread(target=prepare, args=("one",), name="one")
    second = threading.Thread(target=prepare, args=("two",), name="two")
    first.start()
    assert first_wrote.wait(60)
    second.start()
    first.join(120)
    second.join(120)
    assert set(results) == {"one", "two"}
    assert all(shards_at_return["one"]) and len(shards_at_return["one"]) == 5  # 40 rows, 8 per unit
    assert all(Path(s).exists() for s in results["one"].shards)
    assert results["two"].summary["cache"]["hit"] is True  # it waited for the first, then reused its entry
    assert not [p for p in entry.parent.iterdir() if p.name != entry.name and not p.name.endswith(".lock")]


def _wait(barrier) -> None:
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # the other preparation waits on the lock instead (the fixed behaviour)
