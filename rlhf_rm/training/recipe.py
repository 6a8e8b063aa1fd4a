"""The training recipe run by every Ray Train worker: setup → train → evaluate → save → cleanup.

Resumable: a checkpoint holds the HF model plus `train_state.pt` (optimizer, scheduler, RNG, data
position, metric history; training/checkpoints.py). Batch plans are a pure function of (seed, epoch,
world size), so the data position is just (epoch, step in epoch): a resumed run trains exactly the steps
not yet trained. A streamed split (data.streaming=true) arrives through Ray Data instead; a resumed run
skips as many batches of the epoch as were trained (the stream's order is not replayed exactly).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.planner import plan_steps, row_length
from rlhf_rm.checkpoint.scorer import score_groups
from rlhf_rm.config import TrainConfig, as_dict
from rlhf_rm.evaluation.metrics import group_metrics, headline
from rlhf_rm.losses import LengthPenalty, build_loss
from rlhf_rm.model import load_tokenizer
from rlhf_rm.training.checkpoints import (
    DEEPSPEED_DIR,
    all_rng_states,
    check_resume,
    load_train_state,
    position_from,
    resume_contract,
    resume_directory,
    save_and_report,
)
from rlhf_rm.training.dev_report import flatten, record_diagnostics
from rlhf_rm.training.model_state import build_reward_model, load_adapter_state, load_length_head_state
from rlhf_rm.training.progress import format_duration, print_line, write_progress
from rlhf_rm.training.sources import PlannedSteps, StreamedSteps
from rlhf_rm.training.steps import build_optimizer, ensemble_loss, train_step  # noqa: F401
from rlhf_rm.training.tracking import RunTracker

__all__ = ["RewardModelRecipe", "ensemble_loss", "train_loop_per_worker"]


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry: `config` is the driver's train_loop_config (see rlhf_rm.train.worker_config)."""
    recipe = RewardModelRecipe(config)
    recipe.setup()
    try:
        train_seconds = recipe.train()
        recipe.finish(train_seconds)
    finally:
        recipe.cleanup()


class RewardModelRecipe:
    """One worker's share of a run. Every public method is one stage; the state they share is on self."""

    def __init__(self, config: dict):
        self.settings: TrainConfig = config["settings"]
        self.job = config  # backbone_path, run_dir, metadata, and the data's object refs / stream
        self.window = _Window()

    # -- setup ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        settings = self.settings
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        torch.manual_seed(settings.seed)
        self.device = ray.train.torch.get_device() if settings.trainer.use_gpu else torch.device("cpu")
        self.loss_fn = build_loss(settings.loss)
        length_head = settings.model.length_head
        self.length_penalty = LengthPenalty(length_head.corr_weight, length_head.length_corr_weight,
                                            length_head.ortho_weight) if length_head.enabled else None
        self._setup_data()
        self._setup_model()
        self.position = position_from(self.state, self.rank)
        if self.rank == 0 and self.state:
            print_line(f"resuming at step {self.position.step} (epoch {self.position.epoch}, "
                       f"step {self.position.step_in_epoch} of it)")
        use_bf16 = settings.trainer.bf16 and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
        self.tracker = RunTracker(settings.logger, self.job["run_dir"], as_dict(settings), name=str(settings.run_name),
                                  run_id=self.job.get("wandb_run_id")) if self.rank == 0 else None
        if self.tracker:
            self.tracker.summary(flatten({"data": self.job["metadata"].get("data_summary", {})}))
        # No progress bar here: rank 0 writes progress.json each step and the driver draws the one bar
        # (training/progress.py); a bar per worker would be relayed by Ray, redraw by redraw.
        self.pairs_done_before = self.source.pairs_done(self.position.trained_steps)

    def _setup_data(self) -> None:
        settings, batching = self.settings, self.settings.batching
        self.dev_groups = ray.get(self.job["dev_ref"])
        epochs = settings.trainer.epochs
        if self.job.get("stream"):
            self.source = StreamedSteps(ray.train.get_dataset_shard("train"), self.job["stream"], batching, epochs,
                                        settings.seed + self.rank, self.world, self.device)
        else:
            self.source = PlannedSteps.plan(ray.get(self.job["train_ref"]), batching, epochs, self.world, self.rank,
                                            settings.seed)
        self.total_steps = self.source.total_steps
        if settings.trainer.max_steps:
            self.total_steps = min(self.total_steps, settings.trainer.max_steps)
        self.dev_plan = plan_steps([row_length(g, batching.layout) for g in self.dev_groups], self.world,
                                   batching.eval_tokens_per_worker, shuffle=False)

    def _setup_model(self) -> None:
        settings = self.settings
        resume_dir = resume_directory(settings.trainer.resume)
        self.state = load_train_state(resume_dir)
        self.contract = resume_contract(settings, self.world, self.total_steps)
        check_resume(self.state, self.contract, str(settings.run_name))
        use_deepspeed = settings.deepspeed.enabled
        # The saved HF weights have LoRA adapters merged in: a LoRA resume starts from the backbone and puts
        # the saved adapters back (DeepSpeed restores the whole module from its own state).
        adapters = (self.state or {}).get("adapters")
        from_checkpoint = resume_dir and not use_deepspeed and not adapters
        weights = resume_dir if from_checkpoint else self.job["backbone_path"]
        self.tokenizer = load_tokenizer(weights)
        self.model = build_reward_model(weights, self.tokenizer, settings.model, settings.batching.attention,
                                        settings.trainer.gradient_checkpointing)
        if adapters and not use_deepspeed:
            load_adapter_state(self.model, adapters)
        if (self.state or {}).get("length_head") and not use_deepspeed:  # the HF weights hold the quality head only
            load_length_head_state(self.model, self.state["length_head"])
        self.optimizer, self.scheduler = build_optimizer(self.model, settings.trainer, self.total_steps)
        self.engine = None
        if use_deepspeed:
            self._setup_deepspeed(resume_dir)
        else:
            self.model = self.model.to(self.device)
            if self.state is not None:
                self.optimizer.load_state_dict(self.state["optimizer"])
                self.scheduler.load_state_dict(self.state["scheduler"])
            self.forward = (ray.train.torch.prepare_model(self.model, move_to_device=False) if self.world > 1
                            else self.model)

    def _setup_deepspeed(self, resume_dir: str | None) -> None:
        import deepspeed

        ds_config = dict(self.settings.deepspeed.config)
        ds_config.setdefault("train_micro_batch_size_per_gpu", 1)
        ds_config.setdefault("gradient_accumulation_steps", 1)
        ds_config.setdefault("gradient_clipping", self.settings.trainer.max_grad_norm)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=ds_config)
        if resume_dir:
            self.engine.load_checkpoint(str(Path(resume_dir) / DEEPSPEED_DIR), tag="latest_state")
        self.forward = self.engine

    # -- train ------------------------------------------------------------------------------------------
    def train(self) -> float:
        """Every step from the resume position to the end (periodic evaluations and checkpoints included);
        returns the seconds spent."""
        trainer, position = self.settings.trainer, self.position
        self.started = time.perf_counter()
        self.pairs_seen = self.tokens_seen = 0
        start_epoch, start_step = position.epoch, position.step_in_epoch
        for epoch in range(start_epoch, trainer.epochs):
            if position.step >= self.total_steps:
                break
            first = start_step if epoch == start_epoch else 0
            for step_in_epoch, groups, step_pairs in self.source.steps(epoch, first):
                self.step(epoch, step_in_epoch, groups, step_pairs)
                if position.step >= self.total_steps:
                    break  # the final evaluation and checkpoint follow the loop
                dev = self.evaluate() if trainer.eval_every and position.step % trainer.eval_every == 0 else None
                if trainer.checkpoint_every and position.step % trainer.checkpoint_every == 0:
                    self.save(dev, epoch, step_in_epoch + 1, final=False)
        return time.perf_counter() - self.started

    def step(self, epoch: int, step_in_epoch: int, groups: list, step_pairs: int) -> None:
        """One optimizer step, its bookkeeping, and the periodic log line."""
        batch = collate(groups, self.tokenizer.pad_token_id, self.settings.batching.layout)
        out = train_step(self.forward, batch, groups, self.loss_fn, self.optimizer, self.scheduler,
                         engine=self.engine, device=self.device, max_grad_norm=self.settings.trainer.max_grad_norm,
                         flex=self.settings.batching.attention == "flex", autocast=self.autocast,
                         length_penalty=self.length_penalty)
        position = self.position
        position.step += 1
        position.trained_steps.append([epoch, step_in_epoch])
        self.pairs_seen += step_pairs
        self.tokens_seen += batch.real_tokens * self.world  # the planner gives workers about equal tokens
        step_loss = self.window.add(out, len(groups))
        if self.rank == 0:
            write_progress(self.job["run_dir"], step=position.step, total_steps=self.total_steps, epoch=epoch,
                           step_in_epoch=step_in_epoch, pairs_done=self.pairs_done_before + self.pairs_seen,
                           total_pairs=self.source.total_pairs, loss=step_loss)
        if position.step % self.settings.trainer.log_every == 0 or position.step == self.total_steps:
            self.log(epoch + (step_in_epoch + 1) / self.source.steps_in_epoch(epoch))

    def log(self, epoch: float) -> None:
        elapsed = time.perf_counter() - self.started
        step = self.position.step
        loss, accuracy, stats = self.window.take()
        metrics = {"train/loss": loss, "train/lr": self.scheduler.get_last_lr()[0],
                   "train/pairs_per_s": self.pairs_seen / elapsed, "train/tokens_per_s": self.tokens_seen / elapsed,
                   "train/epoch": epoch, **({"train/accuracy": accuracy} if accuracy is not None else {}),
                   **{f"train/{key}": value for key, value in stats.items()}}
        self.position.metrics_log.append({"step": step, **metrics})
        if self.rank == 0:  # one line per logged step, from one worker
            self.tracker.log(metrics, step=step)
            total = self.source.total_pairs
            done = (self.pairs_done_before + self.pairs_seen) / total
            eta = elapsed / max(self.pairs_seen, 1) * (total - self.pairs_done_before - self.pairs_seen)
            print_line(f"step {step}/{self.total_steps} | {done:.0%} | loss {metrics['train/loss']:.4f} | "
                       f"{metrics['train/pairs_per_s']:.2f} examples/s | ETA {format_duration(eta)}")

    # -- evaluate ---------------------------------------------------------------------------------------
    def evaluate(self, log: bool = True) -> dict:
        """Dev metrics: each worker scores its share of the dev plan, rank 0 gathers them all and adds the
        diagnostics (written to diagnostics.json). `log`: also append them to the metric log and W&B."""
        mine = [assignment[self.rank] for assignment in self.dev_plan]
        scored = score_groups(self.forward, self.dev_groups, self.tokenizer.pad_token_id,
                              layout=self.settings.batching.layout, batches=mine, device=self.device,
                              autocast=self.autocast, flex=self.settings.batching.attention == "flex")
        scores, spreads = _gather_scores(scored, mine, len(self.dev_groups), self.world)
        metrics = group_metrics(self.dev_groups, scores)
        if spreads:
            metrics["ensemble_spread_mean"] = sum(spreads) / len(spreads)
        if self.rank == 0:
            metrics.update(record_diagnostics(self.dev_groups, scores, self.job["run_dir"], self.tracker,
                                              self.position.step, self.tokenizer))
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if log:
            step = self.position.step
            self.position.metrics_log.append({"step": step, **{f"dev/{k}": v for k, v in metrics.items()}})
            if self.rank == 0:
                self.tracker.log({f"dev/{k}": v for k, v in metrics.items()}, step=step)
                print_line(f"[step {step}/{self.total_steps}] dev: {headline(metrics)}")
        return metrics

    # -- save -------------------------------------------------------------------------------------------
    def save(self, dev: dict | None, epoch: int, step_in_epoch: int, final: bool, extra: dict | None = None) -> None:
        """A resumable checkpoint at (epoch, step_in_epoch), reported to Ray Train with the dev metrics."""
        if dev is None:  # every checkpoint carries its own reward mean/std (serving normalizes with them)
            dev = self.evaluate(log=False)
        position = self.position
        metadata = {**self.job["metadata"], **position.progress(), "final": final}
        if dev is not None:
            metadata.update({"dev_metrics": dev, "reward_mean": dev.get("reward_mean"),
                             "reward_std": dev.get("reward_std")})
        report = {"step": position.step, **({f"dev_{k}": v for k, v in dev.items()} if dev else {}), **(extra or {})}
        train_state = {**position.state(epoch, step_in_epoch, all_rng_states(self.world)), "contract": self.contract}
        save_and_report(self.model, self.engine, self.tokenizer, self.rank, metadata, train_state, self.optimizer,
                        self.scheduler, report)
        if self.rank == 0 and self.job.get("outputs_uri"):  # rank 0's node may not be the driver's
            from rlhf_rm.checkpoint.storage import upload_run_outputs

            upload_run_outputs(self.job["run_dir"], self.job["outputs_uri"])

    def finish(self, train_seconds: float) -> None:
        """The final evaluation, summary and checkpoint."""
        leftover = self.source.leftover(self.device)
        dev = self.evaluate(log=False)
        summary = {"train_seconds": train_seconds, "train_pairs_per_s": self.pairs_seen / max(train_seconds, 1e-9),
                   "train_tokens_per_s": self.tokens_seen / max(train_seconds, 1e-9), "train_steps": self.position.step,
                   **({"train_stream_leftover_groups": leftover} if leftover is not None else {}),
                   **{f"dev/{k}": v for k, v in dev.items()}}
        self.position.metrics_log.append({"step": self.position.step, **summary})
        if self.tracker:
            self.tracker.log(summary, step=self.position.step)
            self.tracker.summary(summary)
        self.save(dev, self.settings.trainer.epochs, 0, final=True,
                  extra={k: v for k, v in summary.items() if not k.startswith("dev/")})

    # -- cleanup ----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        if getattr(self, "tracker", None):
            self.tracker.finish()


class _Window:
    """Training loss, pair accuracy and the step's other statistics since the last log line."""

    def __init__(self):
        self.loss, self.correct, self.groups, self.hard_pairs, self.steps = 0.0, 0, 0, 0, 0
        self.stats: dict[str, float] = {}

    def add(self, out, groups: int) -> float:
        """Count one step; returns its loss."""
        chosen, rejected, _, _ = out.inputs.pair_rewards()
        loss = out.loss.item()
        self.loss += loss * groups
        self.correct += int((chosen > rejected).sum().item())
        self.groups += groups
        self.hard_pairs += len(chosen)
        self.steps += 1
        for key, value in out.stats.items():
            self.stats[key] = self.stats.get(key, 0.0) + float(value)
        return loss

    def take(self) -> tuple[float, float | None, dict]:
        """(mean loss per group, accuracy on pairs with a preferred side or None, per-step means of the other
        statistics), and start a new window."""
        loss, accuracy = self.loss / self.groups, self.correct / self.hard_pairs if self.hard_pairs else None
        stats = {key: value / self.steps for key, value in self.stats.items()}
        self.__init__()
        return loss, accuracy, stats


def _gather_scores(scored, batches: list, count: int, world: int) -> tuple[list, list]:
    """Every worker's scores of its batches, gathered everywhere and ordered by group index; and the
    ensemble spreads of all scored responses (empty for a single head)."""
    import torch.distributed as dist

    indices = [i for batch in batches for i in batch]
    scores = [scored.rewards[i] for i in indices]
    spreads = [s for i in indices for s in scored.spreads[i]] if scored.spreads is not None else []
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (indices, scores, spreads))
        indices = [i for part in gathered for i in part[0]]
        scores = [s for part in gathered for s in part[1]]
        spreads = [s for part in gathered for s in part[2]]
    by_index = dict(zip(indices, scores))
    return [by_index[i] for i in range(count)], spreads
