"""The per-worker training loop run by Ray Train: batches → model → loss → optimizer, eval, checkpoints."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.planner import plan_steps
from rlhf_rm.losses import LossInputs, build_loss
from rlhf_rm.metrics import group_metrics, headline
from rlhf_rm.model import load_reward_model, load_tokenizer, save_checkpoint
from rlhf_rm.tracking import RunTracker


def row_length(group, layout: str) -> int:
    """Tokens one example occupies in a row of the chosen layout (the planner's cost)."""
    return group.shared_length() if layout == "prefix_shared" else max(
        len(group.prompt_ids) + len(r) for r in group.response_ids)


def rows_per_group(group, layout: str) -> int:
    return 1 if layout == "prefix_shared" else len(group.response_ids)


def train_loop_per_worker(config: dict) -> None:
    cfg = config["cfg"]
    trainer_cfg = cfg["trainer"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg["seed"])
    device = ray.train.torch.get_device() if trainer_cfg["use_gpu"] else torch.device("cpu")

    train_groups = ray.get(config["train_ref"])
    dev_groups = ray.get(config["dev_ref"])
    tokenizer = load_tokenizer(config["backbone_path"])
    model = load_reward_model(config["backbone_path"], tokenizer, head_init_std=cfg["model"].get("head_init_std"))
    if trainer_cfg.get("gradient_checkpointing"):
        model.hf_model.gradient_checkpointing_enable()
    layout = trainer_cfg["layout"]
    loss_fn = build_loss(cfg["loss"])

    lengths = [row_length(g, layout) * rows_per_group(g, layout) for g in train_groups]
    epochs = int(trainer_cfg["epochs"])
    plans = [plan_steps(lengths, world, trainer_cfg["tokens_per_worker"], seed=cfg["seed"] + epoch,
                        max_groups_per_worker=trainer_cfg.get("max_pairs_per_worker"))
             for epoch in range(epochs)]
    total_steps = sum(len(p) for p in plans)
    dev_lengths = [row_length(g, layout) * rows_per_group(g, layout) for g in dev_groups]
    dev_plan = plan_steps(dev_lengths, world, trainer_cfg["eval_tokens_per_worker"], shuffle=False)

    optimizer, scheduler = _build_optimizer(model, trainer_cfg, total_steps)
    engine = None
    if cfg["deepspeed"].get("enabled"):
        import deepspeed

        ds_config = dict(cfg["deepspeed"]["config"])
        ds_config.setdefault("train_micro_batch_size_per_gpu", 1)
        ds_config.setdefault("gradient_accumulation_steps", 1)
        ds_config.setdefault("gradient_clipping", trainer_cfg["max_grad_norm"])
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        forward = engine
    else:
        model = model.to(device)
        forward = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model

    tracker = RunTracker(cfg.get("logger"), config["run_dir"], cfg) if rank == 0 else None
    progress = None
    total_pairs = sum(len(shard) for plan in plans for assignment in plan for shard in assignment)
    if rank == 0:
        from ray.experimental.tqdm_ray import tqdm

        progress = tqdm(total=total_pairs, desc="train", unit="pair")
    metrics_log: list[dict] = []
    step = 0
    started = time.perf_counter()
    pairs_seen = tokens_seen = 0
    window_loss, window_correct, window_pairs, window_hard_pairs = 0.0, 0, 0, 0
    eval_every = trainer_cfg.get("eval_every") or 0
    log_every = trainer_cfg.get("log_every") or 10
    for epoch, plan in enumerate(plans):
        for assignment in plan:
            forward.train()
            groups = [train_groups[i] for i in assignment[rank]]
            batch = collate(groups, tokenizer.pad_token_id, layout)
            inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
            rewards, mask = batch.per_group(forward(**inputs))
            loss_inputs = LossInputs.from_groups(groups, rewards, mask)
            loss = loss_fn(loss_inputs)
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
            step_pairs = sum(len(shard) for shard in assignment)
            pairs_seen += step_pairs
            tokens_seen += batch.real_tokens * world  # other workers carry about as many
            window_loss += loss.item() * len(groups)
            first, second, _, _ = loss_inputs.pair_rewards()
            window_correct += int((first > second).sum().item())
            window_pairs += len(groups)
            window_hard_pairs += len(first)
            if progress is not None:
                progress.update(step_pairs)
            if step % log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                train_metrics = {"train/loss": window_loss / window_pairs,
                                 "train/accuracy": window_correct / max(window_hard_pairs, 1),
                                 "train/lr": scheduler.get_last_lr()[0],
                                 "train/pairs_per_s": pairs_seen / elapsed,
                                 "train/tokens_per_s": tokens_seen / elapsed,
                                 "train/epoch": epoch + step / max(len(plan), 1) / epochs}
                window_loss, window_correct, window_pairs, window_hard_pairs = 0.0, 0, 0, 0
                metrics_log.append({"step": step, **train_metrics})
                if rank == 0:
                    done = pairs_seen / total_pairs
                    eta = elapsed / done - elapsed if done else float("nan")
                    print(f"step {step}/{total_steps} | {pairs_seen}/{total_pairs} examples | "
                          f"loss {train_metrics['train/loss']:.4f} | {train_metrics['train/pairs_per_s']:.2f} examples/s "
                          f"| ETA {eta / 60:.1f} min", flush=True)
                if tracker:
                    tracker.log(train_metrics, step=step)
            if eval_every and step % eval_every == 0 and step < total_steps:
                dev = evaluate_pairs(forward, dev_groups, dev_plan, rank, world, tokenizer.pad_token_id, layout, device)
                metrics_log.append({"step": step, **{f"dev/{k}": v for k, v in dev.items()}})
                if tracker:
                    tracker.log({f"dev/{k}": v for k, v in dev.items()}, step=step)
                if rank == 0:
                    print(f"[step {step}/{total_steps}] dev: {headline(dev)}", flush=True)
    if progress is not None:
        progress.close()
    train_seconds = time.perf_counter() - started

    dev = evaluate_pairs(forward, dev_groups, dev_plan, rank, world, tokenizer.pad_token_id, layout, device)
    summary = {"step": step, "train_seconds": train_seconds, "train_pairs_per_s": pairs_seen / train_seconds,
               "train_tokens_per_s": tokens_seen / train_seconds, **{f"dev/{k}": v for k, v in dev.items()}}
    metrics_log.append(summary)
    if tracker:
        tracker.log({k: v for k, v in summary.items() if k != "step"}, step=step)
        tracker.summary(summary)
        tracker.finish()

    state_dict = None
    if engine is not None and engine.zero_optimization_stage() == 3:
        # Every rank takes part in gathering the shards; rank 0 receives the full weights.
        full = engine._zero3_consolidated_16bit_state_dict()
        if rank == 0:
            state_dict = {k.removeprefix("hf_model."): v for k, v in full.items()}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            metadata = {**config["metadata"], "dev_metrics": dev, "steps": step,
                        "reward_mean": dev.get("reward_mean"), "reward_std": dev.get("reward_std"),
                        "train_seconds": train_seconds, "metrics_log": metrics_log}
            save_checkpoint(model, tokenizer, tmp, metadata, state_dict=state_dict)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report({k.replace("/", "_"): v for k, v in summary.items()}, checkpoint=checkpoint)


def evaluate_pairs(forward, groups, plan, rank, world, pad_id, layout, device) -> dict:
    """Score every group (each worker its shard, the same number of forwards everywhere) and gather."""
    forward.eval()
    indices, scores = [], []
    with torch.no_grad():
        for assignment in plan:
            mine = assignment[rank]
            batch = collate([groups[i] for i in mine], pad_id, layout)
            rewards = forward(**{k: v.to(device) for k, v in batch.model_inputs().items()})
            indices.extend(mine)
            flat = rewards.cpu().tolist()
            offsets = [0]
            for size in batch.group_sizes:
                offsets.append(offsets[-1] + size)
            scores.extend(flat[a:b] for a, b in zip(offsets, offsets[1:]))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (indices, scores))
        indices = [i for part in gathered for i in part[0]]
        scores = [s for part in gathered for s in part[1]]
    by_index = dict(zip(indices, scores))
    return group_metrics(groups, [by_index[i] for i in range(len(groups))])


def _build_optimizer(model, trainer_cfg: dict, total_steps: int):
    from transformers import get_scheduler

    head = [p for n, p in model.named_parameters() if n.startswith("hf_model.score.")]
    no_decay = [p for n, p in model.named_parameters()
                if not n.startswith("hf_model.score.") and (p.ndim < 2 or "norm" in n)]
    decay = [p for n, p in model.named_parameters()
             if not n.startswith("hf_model.score.") and not (p.ndim < 2 or "norm" in n)]
    lr = trainer_cfg["lr"]
    groups = [{"params": decay, "weight_decay": trainer_cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0},
              # The head starts from random weights; a larger step lets it catch up with the backbone.
              {"params": head, "weight_decay": 0.0, "lr": lr * trainer_cfg.get("head_lr_multiplier", 1.0)}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))
    warmup = int(round(trainer_cfg.get("warmup_ratio", 0.0) * total_steps))
    scheduler = get_scheduler(trainer_cfg["lr_schedule"], optimizer, num_warmup_steps=warmup,
                              num_training_steps=max(total_steps, 1))
    return optimizer, scheduler
