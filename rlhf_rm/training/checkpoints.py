"""Resumable checkpoints: the HF model (+ rlhf_rm.json) plus `train_state.pt` (optimizer, scheduler, RNG,
data position, metric history), reported to Ray Train; DeepSpeed's sharded state in `deepspeed/`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint

from rlhf_rm.checkpoint.export import export_checkpoint
from rlhf_rm.model import merged_for_saving
from rlhf_rm.training.model_state import adapter_state, full_state_dict, length_head_state

TRAIN_STATE_FILE = "train_state.pt"
DEEPSPEED_DIR = "deepspeed"


@dataclass
class Position:
    """Where training stands; saved in every checkpoint and restored on resume."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0  # optimizer steps done
    metrics_log: list = field(default_factory=list)  # one entry per log / evaluation
    trained_steps: list = field(default_factory=list)  # [epoch, step in epoch] of every step trained
    resumed_from: list = field(default_factory=list)  # the step of each resume

    def state(self, epoch: int, step_in_epoch: int, rng_by_rank: list | None = None) -> dict:
        """train_state.pt's content for a checkpoint that resumes at (epoch, step_in_epoch); `rng_by_rank`:
        every worker's RNG state (all_rng_states), so each rank resumes its own stream."""
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": self.step,
                "rng": torch.get_rng_state(), "rng_by_rank": rng_by_rank or [torch.get_rng_state()],
                "metrics_log": _plain(self.metrics_log), "trained_steps": self.trained_steps,
                "resumed_from": self.resumed_from}

    def progress(self) -> dict:
        return {"steps": self.step, "metrics_log": self.metrics_log, "trained_steps": self.trained_steps,
                "resumed_from": self.resumed_from}


def _plain(value):
    """JSON-plain copy (numpy scalars become floats): what a weights_only load accepts."""
    return json.loads(json.dumps(value, default=float))


def resume_directory(resume: str) -> str | None:
    """Ray Train hands back the latest checkpoint after a worker failure, or when a run is restarted
    with the same run_name and storage path; `trainer.resume=never` ignores it."""
    if resume == "never":
        return None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    return checkpoint.to_directory(tempfile.mkdtemp(prefix="rlhf_rm_resume_"))


def load_train_state(resume_dir: str | None) -> dict | None:
    # weights_only: the file may sit on shared storage, and a full unpickle would run whatever it holds.
    return torch.load(Path(resume_dir) / TRAIN_STATE_FILE, weights_only=True) if resume_dir else None


def all_rng_states(world: int) -> list:
    """Every rank's torch RNG state, gathered on every rank (a collective when world > 1)."""
    mine = torch.get_rng_state()
    if world == 1:
        return [mine]
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered


def position_from(state: dict | None, rank: int = 0) -> Position:
    """The position to continue from (a fresh one without a state); the resume itself is recorded. Each rank
    restores its own RNG state (checkpoints from before rng_by_rank: rank 0's for all)."""
    if state is None:
        return Position()
    by_rank = state.get("rng_by_rank") or []
    torch.set_rng_state(by_rank[rank] if rank < len(by_rank) else state["rng"])
    return Position(state["epoch"], state["step_in_epoch"], state["step"], state["metrics_log"],
                    state["trained_steps"], [*state.get("resumed_from", []), state["step"]])


def resume_contract(settings, world: int, total_steps: int) -> dict:
    """What a checkpoint's data position and optimizer state mean only under: saved with the state and
    compared on resume (check_resume). Digests keep it short; the message names the part that changed."""
    from dataclasses import asdict

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    data = {k: v for k, v in asdict(settings.data).items() if k != "cache"}
    if data["length_balance"]["mode"] == "none":  # absent before it existed: older checkpoints still resume
        del data["length_balance"]
    return {"world_size": world, "max_steps": settings.trainer.max_steps, "epochs": settings.trainer.epochs,
            "seed": settings.seed, "planned_steps": total_steps, "data": digest(data),
            "batching": digest(asdict(settings.batching)), "model": digest(asdict(settings.model)),
            "deepspeed": digest(asdict(settings.deepspeed))}


def check_resume(state: dict | None, contract: dict, run_name: str) -> None:
    """Refuse a resume whose checkpoint was made under other settings (world size, data, max_steps, ...):
    continuing would silently train the wrong steps. Checkpoints without a contract are not checked."""
    saved = (state or {}).get("contract")
    if not saved:
        return
    changed = [f"{key}: {saved.get(key)} -> {value}" for key, value in contract.items() if saved.get(key) != value]
    if changed:
        raise ValueError(f"cannot resume run {run_name!r} from its latest checkpoint, which was made with other "
                         f"settings ({'; '.join(changed)}). Rerun with those settings, choose a new run_name, "
                         f"or set trainer.resume=never.")


def save_and_report(model, engine, tokenizer, rank: int, metadata: dict, train_state: dict, optimizer, scheduler,
                    report: dict) -> None:
    """Write the checkpoint (rank 0: HF model + train state; every rank: its DeepSpeed shard) and report it."""
    state_dict = full_state_dict(engine, rank)
    with tempfile.TemporaryDirectory() as tmp:
        if engine is not None:
            # Sharded optimizer state: every rank writes its part; Ray merges the directories.
            engine.save_checkpoint(str(Path(tmp) / DEEPSPEED_DIR), tag="latest_state")
        if rank == 0:
            export_checkpoint(merged_for_saving(model), tokenizer, tmp, metadata, state_dict=state_dict)
            if engine is None:
                train_state = {**train_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "adapters": adapter_state(model), "length_head": length_head_state(model)}
            torch.save(train_state, Path(tmp) / TRAIN_STATE_FILE)
        has_files = rank == 0 or engine is not None
        ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp) if has_files else None)

