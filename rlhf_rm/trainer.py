"""The per-worker training loop run by Ray Train: batches → model → loss → optimizer, eval, checkpoints.

Resumable: a checkpoint holds the HF model plus `train_state.pt` (optimizer, scheduler, RNG, data
position, metric history). Batch plans are a pure function of (seed, epoch, world size), so the data
position is just (epoch, step in epoch): a resumed run trains exactly the steps not yet trained.
A streamed split (data.streaming=true) arrives through Ray Data instead; a resumed run skips as many
batches of the epoch as were trained (the stream's order is not replayed exactly).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.planner import plan_steps, row_length
from rlhf_rm.batching.stream import packed_batches
from rlhf_rm.losses import LossInputs, build_loss
from rlhf_rm.metrics import group_metrics, headline
from rlhf_rm.model import apply_lora, load_reward_model, load_tokenizer, merged_for_saving, save_checkpoint
from rlhf_rm.tracking import RunTracker

TRAIN_STATE_FILE = "train_state.pt"
DEEPSPEED_DIR = "deepspeed"
PACKING_EFFICIENCY = 0.85  # real / budgeted tokens of a streamed step, to estimate its step count


class PlannedSteps:
    """In-memory training data: every epoch planned up front (exact step counts and resume)."""

    def __init__(self, groups: list, plans: list, rank: int):
        self.groups, self.plans, self.rank = groups, plans, rank
        self.total_steps = sum(len(p) for p in plans)
        self.total_pairs = sum(len(shard) for plan in plans for assignment in plan for shard in assignment)

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.plans[epoch])

    def pairs_done(self, trained_steps: list) -> int:
        return sum(len(shard) for epoch, s in trained_steps for shard in self.plans[epoch][s])

    def steps(self, epoch: int, first: int):
        """(step in epoch, this worker's groups, groups in the step on all workers)."""
        plan = self.plans[epoch]
        for step_in_epoch in range(first, len(plan)):
            assignment = plan[step_in_epoch]
            yield step_in_epoch, [self.groups[i] for i in assignment[self.rank]], sum(len(a) for a in assignment)


class StreamedSteps:
    """Streamed training data: each worker packs its Ray Data shard; the workers agree each step that all
    still have a batch (DDP needs the same step count everywhere), so an epoch ends when one runs dry."""

    def __init__(self, shard, stream: dict, trainer_cfg: dict, layout: str, seed: int, world: int, device):
        self.shard, self.layout, self.seed, self.world, self.device = shard, layout, seed, world, device
        self.tokens_per_worker = trainer_cfg["tokens_per_worker"]
        self.max_groups = trainer_cfg.get("max_pairs_per_worker")
        budget = world * self.tokens_per_worker * PACKING_EFFICIENCY
        self.estimate = max(1, math.ceil(stream["tokens"][layout] / budget))
        self.total_steps = self.estimate * int(trainer_cfg["epochs"])
        self.total_pairs = stream["groups"] * int(trainer_cfg["epochs"])
        self.untrained = 0  # groups left on this worker when another ran dry (reported, not hidden)

    def steps_in_epoch(self, epoch: int) -> int:
        return self.estimate

    def pairs_done(self, trained_steps: list) -> int:
        return self.total_pairs * len(trained_steps) // max(self.total_steps, 1)

    def steps(self, epoch: int, first: int):
        batches = packed_batches(self.shard, self.layout, self.tokens_per_worker, self.seed + epoch,
                                 max_groups=self.max_groups)
        step_in_epoch = 0
        while True:
            local = next(batches, None)
            flags = torch.tensor([int(local is not None), len(local or [])], device=self.device)
            if self.world > 1:
                dist.all_reduce(flags)
            if int(flags[0]) < self.world:
                self.untrained += len(local or []) + sum(len(b) for b in batches)
                return
            if step_in_epoch >= first:
                yield step_in_epoch, local, int(flags[1])
            step_in_epoch += 1


def train_loop_per_worker(config: dict) -> None:
    cfg = config["cfg"]
    trainer_cfg = cfg["trainer"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg["seed"])
    device = ray.train.torch.get_device() if trainer_cfg["use_gpu"] else torch.device("cpu")
    layout = trainer_cfg["layout"]
    loss_fn = build_loss(cfg["loss"])

    dev_groups = ray.get(config["dev_ref"])
    epochs = int(trainer_cfg["epochs"])
    if config.get("stream"):
        source = StreamedSteps(ray.train.get_dataset_shard("train"), config["stream"], trainer_cfg, layout,
                               cfg["seed"] + rank, world, device)
    else:
        train_groups = ray.get(config["train_ref"])
        lengths = [row_length(g, layout) for g in train_groups]
        source = PlannedSteps(train_groups, [
            plan_steps(lengths, world, trainer_cfg["tokens_per_worker"], seed=cfg["seed"] + epoch,
                       max_groups_per_worker=trainer_cfg.get("max_pairs_per_worker")) for epoch in range(epochs)], rank)
    total_steps = source.total_steps
    if trainer_cfg.get("max_steps"):
        total_steps = min(total_steps, int(trainer_cfg["max_steps"]))
    dev_plan = plan_steps([row_length(g, layout) for g in dev_groups], world,
                          trainer_cfg["eval_tokens_per_worker"], shuffle=False)

    # -- model, optimizer, and where to start ----------------------------------------------------
    resume_dir = _resume_directory(trainer_cfg)
    state = torch.load(Path(resume_dir) / TRAIN_STATE_FILE, weights_only=False) if resume_dir else None
    use_deepspeed = bool(cfg["deepspeed"].get("enabled"))
    weights_from = resume_dir if resume_dir and not use_deepspeed else config["backbone_path"]
    tokenizer = load_tokenizer(weights_from)
    flex = trainer_cfg.get("attention", "sdpa") == "flex"
    model = load_reward_model(weights_from, tokenizer, head_init_std=cfg["model"].get("head_init_std"),
                              ensemble_size=int(cfg["model"].get("ensemble_size", 1)),
                              attention=trainer_cfg.get("attention", "sdpa"))
    if cfg["model"].get("lora", {}).get("enabled"):
        apply_lora(model, cfg["model"]["lora"])
    if trainer_cfg.get("gradient_checkpointing"):
        model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer, scheduler = _build_optimizer(model, trainer_cfg, total_steps)
    engine = None
    if use_deepspeed:
        import deepspeed

        ds_config = dict(cfg["deepspeed"]["config"])
        ds_config.setdefault("train_micro_batch_size_per_gpu", 1)
        ds_config.setdefault("gradient_accumulation_steps", 1)
        ds_config.setdefault("gradient_clipping", trainer_cfg["max_grad_norm"])
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        if resume_dir:
            engine.load_checkpoint(str(Path(resume_dir) / DEEPSPEED_DIR), tag="latest_state")
        forward = engine
    else:
        model = model.to(device)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        forward = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    if state is not None:
        torch.set_rng_state(state["rng"])

    start_epoch, start_step_in_epoch = (state["epoch"], state["step_in_epoch"]) if state else (0, 0)
    step = state["step"] if state else 0
    metrics_log: list[dict] = state["metrics_log"] if state else []
    trained_steps: list[list[int]] = state["trained_steps"] if state else []
    resumed_from = [*state.get("resumed_from", []), step] if state else []
    if rank == 0 and state:
        print(f"resuming at step {step} (epoch {start_epoch}, step {start_step_in_epoch} of it)", flush=True)

    use_bf16 = bool(trainer_cfg.get("bf16")) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    tracker = RunTracker(cfg.get("logger"), config["run_dir"], cfg) if rank == 0 else None
    if tracker:
        tracker.summary(flatten({"data": config["metadata"].get("data_summary", {})}))
    total_pairs = source.total_pairs
    pairs_done_before = source.pairs_done(trained_steps)
    progress = None
    if rank == 0:
        from ray.experimental.tqdm_ray import tqdm

        progress = tqdm(total=total_pairs, desc="train", unit="pair")
        progress.update(pairs_done_before)

    def evaluate() -> dict:
        metrics = evaluate_groups(forward, dev_groups, dev_plan, rank, world, tokenizer.pad_token_id, layout, device,
                                  autocast, flex)
        scores = metrics.pop("_scores")
        if rank == 0:
            found = pair_diagnostics(dev_groups, scores)
            if found is not None:
                diagnostics, chosen, rejected = found
                if tracker:
                    tracker.log_evaluation(step, chosen, rejected, [
                        worst_pair_row(row, dev_groups[int(row["id"])], tokenizer)
                        for row in diagnostics["worst_pairs"]])
                Path(config["run_dir"]).mkdir(parents=True, exist_ok=True)
                Path(config["run_dir"], "diagnostics.json").write_text(json.dumps(diagnostics, indent=2, default=str))
                length = diagnostics["length"]
                metrics.update({"length_reward_correlation": length.get("reward_length_correlation"),
                                "accuracy_chosen_shorter": length.get("shorter_chosen_accuracy"),
                                "ece": diagnostics["calibration"].get("ece")})
        return {k: v for k, v in metrics.items() if v is not None}

    def save(dev: dict | None, epoch: int, step_in_epoch: int, final: bool, extra: dict | None = None) -> None:
        train_state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": step, "rng": torch.get_rng_state(),
                       "metrics_log": metrics_log, "trained_steps": trained_steps, "resumed_from": resumed_from}
        metadata = {**config["metadata"], "steps": step, "final": final, "metrics_log": metrics_log,
                    "trained_steps": trained_steps, "resumed_from": resumed_from}
        if dev is not None:
            metadata.update({"dev_metrics": dev, "reward_mean": dev.get("reward_mean"),
                             "reward_std": dev.get("reward_std")})
        report = {"step": step, **({f"dev_{k}": v for k, v in dev.items()} if dev else {}), **(extra or {})}
        _save_and_report(model, engine, tokenizer, rank, metadata, train_state, optimizer, scheduler, report)

    # -- the loop ----------------------------------------------------------------------------------
    checkpoint_every = trainer_cfg.get("checkpoint_every") or 0
    eval_every = trainer_cfg.get("eval_every") or 0
    log_every = trainer_cfg.get("log_every") or 10
    window = {"loss": 0.0, "correct": 0, "groups": 0, "hard_pairs": 0}
    started = time.perf_counter()
    pairs_seen = tokens_seen = 0
    for epoch in range(start_epoch, epochs):
        if step >= total_steps:
            break
        first = start_step_in_epoch if epoch == start_epoch else 0
        for step_in_epoch, groups, step_pairs in source.steps(epoch, first):
            forward.train()
            batch = collate(groups, tokenizer.pad_token_id, layout)
            with autocast():
                flat = forward(**{k: v.to(device) for k, v in batch.model_inputs(flex).items()})
            loss, loss_inputs = ensemble_loss(flat.float(), batch, groups, loss_fn)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), trainer_cfg["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            trained_steps.append([epoch, step_in_epoch])
            pairs_seen += step_pairs
            tokens_seen += batch.real_tokens * world  # the planner gives workers about equal tokens
            chosen, rejected, _, _ = loss_inputs.pair_rewards()
            window["loss"] += loss.item() * len(groups)
            window["correct"] += int((chosen > rejected).sum().item())
            window["groups"] += len(groups)
            window["hard_pairs"] += len(chosen)
            if progress is not None:
                progress.update(step_pairs)
                _write_progress(config["run_dir"], step, epoch, step_in_epoch, total_steps)
            if step % log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                train_metrics = {"train/loss": window["loss"] / window["groups"],
                                 "train/lr": scheduler.get_last_lr()[0],
                                 "train/pairs_per_s": pairs_seen / elapsed,
                                 "train/tokens_per_s": tokens_seen / elapsed,
                                 "train/epoch": epoch + (step_in_epoch + 1) / source.steps_in_epoch(epoch)}
                if window["hard_pairs"]:
                    train_metrics["train/accuracy"] = window["correct"] / window["hard_pairs"]
                window = {"loss": 0.0, "correct": 0, "groups": 0, "hard_pairs": 0}
                metrics_log.append({"step": step, **train_metrics})
                if tracker:
                    tracker.log(train_metrics, step=step)
                    done = (pairs_done_before + pairs_seen) / total_pairs
                    eta = elapsed / max(pairs_seen, 1) * (total_pairs - pairs_done_before - pairs_seen)
                    print(f"step {step}/{total_steps} | {done:.0%} | loss {train_metrics['train/loss']:.4f} | "
                          f"{train_metrics['train/pairs_per_s']:.2f} examples/s | ETA {eta / 60:.1f} min", flush=True)
            if step >= total_steps:
                break  # the final evaluation and checkpoint follow the loop
            dev = None
            if eval_every and step % eval_every == 0:
                dev = evaluate()
                metrics_log.append({"step": step, **{f"dev/{k}": v for k, v in dev.items()}})
                if tracker:
                    tracker.log({f"dev/{k}": v for k, v in dev.items()}, step=step)
                    print(f"[step {step}/{total_steps}] dev: {headline(dev)}", flush=True)
            if checkpoint_every and step % checkpoint_every == 0:
                save(dev, epoch, step_in_epoch + 1, final=False)
    if progress is not None:
        progress.close()
    train_seconds = time.perf_counter() - started

    leftover = None
    if isinstance(source, StreamedSteps):
        counts = torch.tensor([source.untrained], device=device)
        if world > 1:
            dist.all_reduce(counts)
        leftover = int(counts[0])
    dev = evaluate()
    summary = {"train_seconds": train_seconds, "train_pairs_per_s": pairs_seen / max(train_seconds, 1e-9),
               "train_tokens_per_s": tokens_seen / max(train_seconds, 1e-9), "train_steps": step,
               **({"train_stream_leftover_groups": leftover} if leftover is not None else {}),
               **{f"dev/{k}": v for k, v in dev.items()}}
    metrics_log.append({"step": step, **summary})
    if tracker:
        tracker.log(summary, step=step)
        tracker.summary(summary)
        tracker.finish()
    save(dev, epochs, 0, final=True, extra={k: v for k, v in summary.items() if not k.startswith("dev/")})


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"data": {"train": {"used": 3}}} → {"data/train/used": 3}, for W&B's flat summary keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def ensemble_loss(flat: torch.Tensor, batch, groups, loss_fn):
    """The loss of each reward head, averaged; with one head this is just the loss.
    Returns the loss and the LossInputs of the heads' mean reward (for accuracy bookkeeping)."""
    heads = flat.unsqueeze(-1) if flat.ndim == 1 else flat  # [N, heads]
    losses = []
    for head in range(heads.shape[1]):
        rewards, mask = batch.per_group(heads[:, head])
        losses.append(loss_fn(LossInputs.from_groups(groups, rewards, mask)))
    rewards, mask = batch.per_group(heads.detach().mean(dim=1))
    return torch.stack(losses).mean(), LossInputs.from_groups(groups, rewards, mask)


def _resume_directory(trainer_cfg: dict) -> str | None:
    """Ray Train hands back the latest checkpoint after a worker failure, or when a run is restarted
    with the same run_name and storage path; `trainer.resume=never` ignores it."""
    if trainer_cfg.get("resume", "auto") == "never":
        return None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    local = tempfile.mkdtemp(prefix="rlhf_rm_resume_")
    return checkpoint.to_directory(local)


def _save_and_report(model, engine, tokenizer, rank, metadata, train_state, optimizer, scheduler, report):
    state_dict = None
    if engine is not None and engine.zero_optimization_stage() == 3:
        # Every rank takes part in gathering the shards; rank 0 receives the full weights.
        full = engine._zero3_consolidated_16bit_state_dict()
        if rank == 0:
            state_dict = {k.removeprefix("hf_model."): v for k, v in full.items()}
    with tempfile.TemporaryDirectory() as tmp:
        if engine is not None:
            # Sharded optimizer state: every rank writes its part; Ray merges the directories.
            engine.save_checkpoint(str(Path(tmp) / DEEPSPEED_DIR), tag="latest_state")
        if rank == 0:
            save_checkpoint(merged_for_saving(model), tokenizer, tmp, metadata, state_dict=state_dict)
            if engine is None:
                train_state = {**train_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            torch.save(train_state, Path(tmp) / TRAIN_STATE_FILE)
        has_files = rank == 0 or engine is not None
        ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp) if has_files else None)


def _write_progress(run_dir: str, step: int, epoch: int, step_in_epoch: int, total_steps: int) -> None:
    """A tiny file other processes (tests, dashboards) can poll for the current position."""
    path = Path(run_dir) / "progress.json"
    path.parent.mkdir(parents=True, exist_ok=True)  # rank 0 may sit on another node than the driver
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "total_steps": total_steps, "epoch": epoch,
                               "step_in_epoch": step_in_epoch, "pid": os.getpid()}))
    tmp.replace(path)


def evaluate_groups(forward, groups, plan, rank, world, pad_id, layout, device, autocast=nullcontext,
                    flex: bool = False) -> dict:
    """Score every group (each worker its shard, the same number of forwards everywhere) and gather."""
    forward.eval()
    indices, scores, spreads = [], [], []
    with torch.no_grad():
        for assignment in plan:
            mine = assignment[rank]
            batch = collate([groups[i] for i in mine], pad_id, layout)
            with autocast():
                heads = forward(**{k: v.to(device) for k, v in batch.model_inputs(flex).items()}).float().cpu()
            if heads.ndim == 2:  # an ensemble: the reward is the heads' mean, their spread its uncertainty
                spreads.extend(heads.std(dim=1, unbiased=False).tolist())
                heads = heads.mean(dim=1)
            matrix, mask = batch.per_group(heads)
            indices.extend(mine)
            scores.extend(row[real].tolist() for row, real in zip(matrix, mask))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (indices, scores, spreads))
        indices = [i for part in gathered for i in part[0]]
        scores = [s for part in gathered for s in part[1]]
        spreads = [s for part in gathered for s in part[2]]
    by_index = dict(zip(indices, scores))
    ordered = [by_index[i] for i in range(len(groups))]
    metrics = group_metrics(groups, ordered)
    if spreads:
        metrics["ensemble_spread_mean"] = sum(spreads) / len(spreads)
    metrics["_scores"] = ordered  # popped by the caller; kept out of logs
    return metrics


def pair_diagnostics(groups, scores) -> tuple[dict, list, list] | None:
    """Issue-9 diagnostics (length bias, calibration, worst pairs) on the dev pairs with a hard label."""
    from rlhf_rm.diagnostics import diagnose

    chosen, rejected, chosen_len, rejected_len, sources, ids = [], [], [], [], [], []
    for index, (group, score) in enumerate(zip(groups, scores)):
        if group.kind != "pair" or group.probability == 0.5:
            continue
        first, second = (0, 1) if group.probability > 0.5 else (1, 0)
        chosen.append(score[first])
        rejected.append(score[second])
        chosen_len.append(len(group.response_ids[first]))
        rejected_len.append(len(group.response_ids[second]))
        sources.append(group.source or "data")
        ids.append(str(index))
    if len(chosen) < 2:
        return None
    return diagnose(chosen, rejected, chosen_len, rejected_len, sources=sources, ids=ids), chosen, rejected


def worst_pair_row(row: dict, group, tokenizer, prompt_tail_tokens: int = 48) -> list:
    """One row of the W&B table of worst-scored dev pairs, with readable text."""
    first, second = (0, 1) if group.probability > 0.5 else (1, 0)
    return [row["margin"], row["chosen"], row["rejected"],
            tokenizer.decode(group.prompt_ids[-prompt_tail_tokens:]),
            tokenizer.decode(group.response_ids[first]), tokenizer.decode(group.response_ids[second])]


def _build_optimizer(model, trainer_cfg: dict, total_steps: int):
    from transformers import get_scheduler

    head, decay, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen by LoRA
        if ".score." in f".{name}":
            head.append(param)
        elif param.ndim < 2 or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    lr = trainer_cfg["lr"]
    groups = [{"params": decay, "weight_decay": trainer_cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0},
              # The head starts from random weights; a larger step lets it catch up with the backbone.
              {"params": head, "weight_decay": 0.0, "lr": lr * trainer_cfg.get("head_lr_multiplier", 1.0)}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))
    warmup = int(round(trainer_cfg.get("warmup_ratio", 0.0) * total_steps))
    scheduler = get_scheduler(trainer_cfg["lr_schedule"], optimizer, num_warmup_steps=warmup,
                              num_training_steps=max(total_steps, 1))
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        # A streamed epoch's step count is an estimate: past it, hold the final rate (cosine would rise again).
        scheduler.lr_lambdas = [functools.partial(_held_after, fn, max(total_steps, 1)) for fn in scheduler.lr_lambdas]
    return optimizer, scheduler


def _held_after(fn, last: int, step: int) -> float:
    return fn(min(step, last))
