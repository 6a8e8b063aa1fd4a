"""Checkpoint files without Ray: the final copy and metrics.json are atomic, the train state loads safely."""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


class _Result:
    """A stand-in for ray.train.Result: the reported metrics and the checkpoint directory."""

    def __init__(self, directory: Path, metrics: dict):
        self.metrics = metrics
        self.checkpoint = SimpleNamespace(as_directory=contextmanager(lambda: (yield str(directory))))


def _split():
    return SimpleNamespace(summary={"groups": 1}, count=1)


def test_final_checkpoint_copy_and_metrics_are_atomic(tmp_path, monkeypatch):
    """A copy or a metrics write that fails half way used to leave the run without its previous
    checkpoint (rmtree first) or with a truncated metrics.json."""
    from rlhf_rm import train

    run_dir = tmp_path / "run"
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "checkpoint" / "model.safetensors").write_text("old weights")
    (run_dir / "metrics.json").write_text(json.dumps({"old": True}))
    source = tmp_path / "reported"
    source.mkdir()
    for name in ("a.bin", "b.bin"):
        (source / name).write_text(name)
    result = _Result(source, {"train_pairs_per_s": 1.0})

    real_copyfile = shutil.copyfile

    def dying_copy(src, dst, **kwargs):
        if Path(src).name == "b.bin":
            raise OSError("disk full")
        return real_copyfile(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    with pytest.raises(OSError, match="disk full"):
        train.write_results(result, run_dir, _split(), _split(), 1.0)
    assert (run_dir / "checkpoint" / "model.safetensors").read_text() == "old weights"
    assert json.loads((run_dir / "metrics.json").read_text()) == {"old": True}
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)

    writes = []
    real_replace = Path.replace
    monkeypatch.setattr(Path, "replace", lambda self, target: writes.append(Path(target).name)
                        or real_replace(self, target))
    train.write_results(result, run_dir, _split(), _split(), 1.0)
    assert sorted((run_dir / "checkpoint").iterdir()) == [run_dir / "checkpoint" / "a.bin",
                                                          run_dir / "checkpoint" / "b.bin"]
    assert json.loads((run_dir / "metrics.json").read_text())["checkpoint"] == str(run_dir / "checkpoint")
    assert "metrics.json" in writes  # written to a temporary name, then renamed into place
    assert not [p.name for p in run_dir.iterdir() if p.name not in ("checkpoint", "metrics.json")]


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return "pwned"


def test_train_state_loads_with_weights_only(tmp_path):
    """Resume read train_state.pt with weights_only=False: any pickle on shared storage ran code."""
    from rlhf_rm.training.checkpoints import TRAIN_STATE_FILE, Position, load_train_state

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = {**Position(step=3, metrics_log=[{"step": 3, "train/loss": np.float64(0.5)}]).state(1, 2),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(state, tmp_path / TRAIN_STATE_FILE)
    loaded = load_train_state(str(tmp_path))
    assert loaded["step"] == 3 and loaded["metrics_log"][0]["train/loss"] == 0.5
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])

    torch.save({"step": 1, "evil": _Payload()}, tmp_path / TRAIN_STATE_FILE)
    with pytest.raises(Exception):
        load_train_state(str(tmp_path))
    assert not _Payload.ran


# -- the recipe's save and resume, in-process ------------------------------------------------------------
# The training recipe (rlhf_rm/training/recipe.py) run directly, without a Ray cluster: Ray Train's few calls (context,
# get_checkpoint, report) are replaced by a stand-in that keeps every reported checkpoint, like Ray's storage.
# A "kill" raises inside a step; the rerun gets the latest checkpoint, exactly what Ray Train hands back when
# a run is restarted with the same run_name and storage path.

class _Killed(Exception):
    pass


class _RayTrainStandIn:
    def __init__(self, storage: Path, world: int = 1):
        self.storage, self.world, self.reported, self.latest = storage, world, [], None

    def install(self, monkeypatch):
        import ray
        import ray.experimental.tqdm_ray
        import ray.train

        monkeypatch.setattr(ray, "get", lambda value: value)
        monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(
            get_world_rank=lambda: 0, get_world_size=lambda: self.world))
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: self.latest)
        monkeypatch.setattr(ray.train, "report", self.report)
        monkeypatch.setattr(ray.experimental.tqdm_ray, "tqdm", lambda **_: SimpleNamespace(
            update=lambda n: None, close=lambda: None))

    def report(self, metrics, checkpoint=None):
        from ray.train import Checkpoint

        if checkpoint is None:
            return
        target = self.storage / f"checkpoint_{len(self.reported):03d}"
        shutil.copytree(checkpoint.path, target)
        self.reported.append((dict(metrics), target))
        self.latest = Checkpoint.from_directory(str(target))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_backbone):
    """The tiny run's settings overrides and prepared data, shared by the resume tests."""
    from conftest import FIXTURES

    return [f"model.path={tiny_backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
            f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}", "data.limit=16", "data.dev_limit=6",
            "trainer.num_workers=1", "batching.tokens_per_worker=700", "trainer.lr=2e-3", "trainer.warmup_ratio=0",
            "trainer.log_every=1", "logger=none", "trainer.checkpoint_every=2", "trainer.max_steps=4",
            "trainer.epochs=2", "run_name=recipe"]


def _run(tmp_path, overrides: list[str], ray_train: _RayTrainStandIn, kill_at: int | None = None,
         monkeypatch=None, wandb_run_id: str | None = None) -> dict:
    """One (possibly killed) run of the recipe; returns the final checkpoint's rlhf_rm.json."""
    from rlhf_rm.backbone import resolve_backbone
    from rlhf_rm.config import compose, settings_from
    from rlhf_rm.checkpoint.metadata import read_metadata
    from rlhf_rm.model import load_tokenizer
    from rlhf_rm.prepare import build_encoder, prepare_splits
    from rlhf_rm.train import checkpoint_metadata
    from rlhf_rm.training import recipe as trainer

    settings = settings_from(compose(overrides))
    backbone = resolve_backbone(settings.model.path)
    encoder = build_encoder(load_tokenizer(backbone), settings.data)
    train, dev = prepare_splits(settings.data, encoder, tmp_path / "run", settings.seed, backbone, 1)
    job = {"settings": settings, "backbone_path": backbone, "run_dir": str(tmp_path / "run"),
           "train_ref": train.groups, "dev_ref": dev.groups, "stream": None,
           "metadata": checkpoint_metadata(settings, train, dev, encoder.spec), "wandb_run_id": wandb_run_id}
    if kill_at is not None:
        real_step = trainer.RewardModelRecipe.step

        def step(recipe, *args):
            if recipe.position.step + 1 == kill_at:
                raise _Killed(f"killed before step {kill_at}")
            return real_step(recipe, *args)

        monkeypatch.setattr(trainer.RewardModelRecipe, "step", step)
        with pytest.raises(_Killed):
            trainer.train_loop_per_worker(job)
        monkeypatch.setattr(trainer.RewardModelRecipe, "step", real_step)
        return {}
    trainer.train_loop_per_worker(job)
    return read_metadata(ray_train.reported[-1][1]).to_dict()


def _losses(meta: dict) -> dict[int, float]:
    return {entry["step"]: entry["train/loss"] for entry in meta["metrics_log"] if "train/loss" in entry}


def _weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def _straight_then_killed(tmp_path, overrides, monkeypatch):
    """An uninterrupted run, then a run of the same settings killed before step 4 (its checkpoint: step 2)."""
    straight = _RayTrainStandIn(tmp_path / "straight")
    straight.install(monkeypatch)
    uninterrupted = _run(tmp_path / "a", overrides, straight)
    resumed_train = _RayTrainStandIn(tmp_path / "resumed")
    resumed_train.install(monkeypatch)
    _run(tmp_path / "b", overrides, resumed_train, kill_at=4, monkeypatch=monkeypatch)
    return straight, uninterrupted, resumed_train


@pytest.mark.parametrize("variant", ["full", "lora", "length_head"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, prepared, variant):
    """Kill before step 4 (the last checkpoint is step 2), rerun: steps continue at 3, optimizer and scheduler
    state come back, and the losses and final weights equal an uninterrupted run's. LoRA used to resume onto
    merged weights with *fresh* adapters (and old optimizer moments on them): its losses after the resume
    differed. ODIN's length head is not in the HF weights: it comes back from the train state.
    Intermediate checkpoints also carry reward_mean/std (a pool normalizing with them answered 400)."""
    extra = {"full": [], "lora": ["model.lora.enabled=true", "model.lora.r=4"],
             "length_head": ["model.length_head.enabled=true"]}[variant]
    overrides = [*prepared, *extra]
    straight, uninterrupted, resumed_train = _straight_then_killed(tmp_path, overrides, monkeypatch)
    assert [m["step"] for m, _ in resumed_train.reported] == [2]
    for _, checkpoint in resumed_train.reported:  # intermediate checkpoints, normalizable
        meta = json.loads((checkpoint / "rlhf_rm.json").read_text())
        assert meta["reward_std"] > 0 and meta["reward_mean"] is not None, checkpoint
    resumed = _run(tmp_path / "b", overrides, resumed_train)
    assert resumed["resumed_from"] == [2]
    assert [tuple(s) for s in resumed["trained_steps"]] == [tuple(s) for s in uninterrupted["trained_steps"]]
    want, got = _losses(uninterrupted), _losses(resumed)
    assert sorted(got) == list(range(1, 5))
    for step in range(1, 5):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    straight_weights, resumed_weights = _weights(straight.reported[-1][1]), _weights(resumed_train.reported[-1][1])
    for name, tensor in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_deepspeed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, prepared):
    """DeepSpeed ZeRO-2 (one process, gloo): the resumed run restores the engine's sharded state and
    ends where the uninterrupted run ends."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        overrides = [*prepared, "deepspeed=zero2"]
        straight, uninterrupted, resumed_train = _straight_then_killed(tmp_path, overrides, monkeypatch)
        assert (resumed_train.reported[0][1] / "deepspeed").is_dir()
        resumed = _run(tmp_path / "b", overrides, resumed_train)
    finally:
        dist.destroy_process_group()
    assert resumed["resumed_from"] == [2]
    want, got = _losses(uninterrupted), _losses(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)


def test_incompatible_resume_is_refused_with_a_message(tmp_path, monkeypatch, prepared):
    """A rerun with the same run_name but another world size, max_steps or data used to continue silently
    from the old checkpoint (its data position meaningless under the new plan)."""
    stand_in = _RayTrainStandIn(tmp_path / "ray")
    stand_in.install(monkeypatch)
    _run(tmp_path, prepared, stand_in, kill_at=3, monkeypatch=monkeypatch)
    for change, named in ((["trainer.max_steps=6"], "max_steps"), (["data.limit=12"], "data"),
                          (["batching.tokens_per_worker=900"], "batching")):
        with pytest.raises(ValueError, match=f"cannot resume.*{named}"):
            _run(tmp_path, [*prepared, *change], stand_in)
    stand_in.world = 2
    with pytest.raises(ValueError, match="cannot resume.*world_size"):
        _run(tmp_path, prepared, stand_in)


def test_each_rank_restores_its_own_rng_state():
    """Only rank 0's RNG state was saved and every rank restored it: the other ranks' streams (dropout,
    sampling) restarted as copies of rank 0's."""
    from rlhf_rm.training.checkpoints import Position, position_from

    torch.manual_seed(1)
    rank0 = torch.get_rng_state()
    torch.manual_seed(2)
    rank1 = torch.get_rng_state()
    state = Position(step=1).state(0, 1, [rank0, rank1])
    for rank, expected in ((1, rank1), (0, rank0)):
        position_from(state, rank)
        assert torch.equal(torch.get_rng_state(), expected), rank


@pytest.mark.slow
def test_wandb_offline_files_hold_the_metrics_and_tables_of_an_ensemble_run(tmp_path, monkeypatch, prepared):
    """A real offline W&B run (logger=wandb, WANDB_MODE=offline from conftest) of a 2-head ensemble with the
    length head: its summary holds the train and dev metrics (the ensemble's spread among them) and the worst-pairs table
    is written as a W&B table file."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    stand_in = _RayTrainStandIn(tmp_path / "ray")
    stand_in.install(monkeypatch)
    overrides = [*(o for o in prepared if not o.startswith("logger=")),
                 "logger=wandb", "model.ensemble_size=2", "trainer.checkpoint_every=0",
                 "model.length_head.enabled=true"]
    meta = _run(tmp_path, overrides, stand_in)
    assert meta["config"]["model"]["ensemble_size"] == 2 and meta["length_head"]["enabled"]
    import wandb

    wandb.teardown()  # the W&B service writes the run's log asynchronously; stopping it flushes everything
    [run_dir] = (tmp_path / "run" / "wandb").glob("offline-run-*")
    [log] = run_dir.glob("run-*.wandb")
    history, summary = _wandb_records(log.read_bytes())
    assert [row["_step"] for row in history if "train/loss" in row] == ["1", "2", "3", "4"], history
    assert float(summary["train_steps"]) == 4 and 0.0 <= float(summary["dev/accuracy"]) <= 1.0
    assert float(summary["dev/ensemble_spread_mean"]) > 0
    assert all(-1 <= float(row["train/length_corr_quality"]) <= 1 for row in history if "train/loss" in row)
    assert any(row.get("dev/worst_pairs/_type") == '"table-file"' for row in history)
    [table] = (run_dir / "files").glob("media/table/dev/worst_pairs_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"][:4] == ["dev_index", "margin", "chosen_reward", "rejected_reward"] and table["data"]
    assert "prompt_end" in table["columns"]  # logger.log_texts defaults to true: the decoded texts are there


def _wandb_records(data: bytes) -> tuple[list[dict], dict]:
    """History rows and the final summary of an offline run's .wandb file: a LevelDB-style log (32 KiB
    blocks, 7-byte record headers; the file opens with a 7-byte W&B header) of protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    chunks, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768  # a block's tail too short for a header is padding
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            chunks.append(pending)
    history, summary = [], {}
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        items = {"history": lambda: record.history.item, "summary": lambda: record.summary.update}
        kind = record.WhichOneof("record_type")
        if kind in items:
            row = {item.key or "/".join(item.nested_key): item.value_json for item in items[kind]()}
            history.append(row) if kind == "history" else summary.update(row)
    return history, summary


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch, prepared, capsys):
    """Every resume used to open a new W&B run. The run id now comes from run_name + storage (what Ray Train
    resumes from): the killed attempt and its resume write one W&B run id, the resume logging only the steps
    after its checkpoint; without WANDB_API_KEY rank 0 says so in one line."""
    from rlhf_rm.training.tracking import run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    stand_in = _RayTrainStandIn(tmp_path / "ray")
    stand_in.install(monkeypatch)
    overrides = [*(o for o in prepared if not o.startswith("logger=")), "logger=wandb"]
    wandb_id = run_id("recipe", str(tmp_path / "ray"))
    assert wandb_id != run_id("recipe", "s3://elsewhere") and wandb_id == run_id("recipe", str(tmp_path / "ray"))
    _run(tmp_path, overrides, stand_in, kill_at=4, monkeypatch=monkeypatch, wandb_run_id=wandb_id)
    _run(tmp_path, overrides, stand_in, wandb_run_id=wandb_id)
    import wandb

    wandb.teardown()
    printed = capsys.readouterr().out
    assert len([line for line in printed.splitlines() if "no WANDB_API_KEY" in line]) == 2, printed  # one per start
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # W&B names an offline run folder offline-run-<second>-<id>, adding -1 when two starts share the second.
    assert len(runs) == 2 and all(re.search(rf"-{wandb_id}(-\d+)?$", run.name) for run in runs), runs
    steps = []
    for run in runs:
        [log] = run.glob("run-*.wandb")
        history, _ = _wandb_records(log.read_bytes())
        steps.append([row["_step"] for row in history if "train/loss" in row])
    assert steps == [["1", "2", "3"], ["3", "4"]], steps
