"""Checkpoint files without Ray: the final copy and metrics.json are atomic, the train state loads safely."""

from __future__ import annotations

import json
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
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    torch.save({"step": 1, "evil": _Payload()}, tmp_path / TRAIN_STATE_FILE)
    with pytest.raises(Exception):
        load_train_state(str(tmp_path))
    assert not _Payload.ran
