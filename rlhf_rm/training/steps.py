"""The training step: the only copy, called by the trainer and every benchmark.

    train_step(model, batch, groups, loss_fn, optimizer, scheduler)  one optimizer step on a ModelBatch
                                                                     (length_penalty=: ODIN's length head)
    build_optimizer(model, trainer_settings, total_steps)            AdamW + LR schedule

The no-grad scoring pass (`score_groups`) lives with the scorer, in rlhf_rm/checkpoint/scorer.py.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rlhf_rm.batching.collate import ModelBatch
from rlhf_rm.batching.tokenize import EncodedGroup
from rlhf_rm.config import TrainerConfig
from rlhf_rm.losses import LengthPenalty, LossInputs
from rlhf_rm.training.model_state import parameter_groups


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached scalar (reading it syncs the device; the caller decides when)
    inputs: LossInputs  # the (quality) heads' mean rewards per group, detached: accuracy bookkeeping
    stats: dict = dataclasses.field(default_factory=dict)  # detached scalars to log (the length head's ρ, cosine)


def train_step(model, batch: ModelBatch, groups: Sequence[EncodedGroup], loss_fn: Callable, optimizer,
               scheduler=None, *, engine=None, device: torch.device | str = "cpu", max_grad_norm: float | None = None,
               flex: bool = False, autocast: Callable = nullcontext,
               length_penalty: LengthPenalty | None = None) -> StepOutput:
    """Forward the batch, the loss of every reward head, backward, clip, optimizer and scheduler step.

    `model` is what runs the forward (the RewardModel, its DDP wrapper or a DeepSpeed engine); with
    `engine` DeepSpeed does backward, clipping and both steps itself. `max_grad_norm=None`: no clipping.
    `length_penalty`: the model has a length head (ODIN, losses/length.py); the loss sees quality + length.
    """
    model.train()
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.model_inputs(flex).items()}
    stats: dict = {}
    with autocast():
        out = model(**inputs, with_length=True) if length_penalty is not None else model(**inputs)
    if length_penalty is None:
        loss, inputs = ensemble_loss(out.float(), batch, groups, loss_fn)
    else:
        loss, inputs = ensemble_loss(out.quality.float(), batch, groups, loss_fn, offset=out.length.float())
        penalty, stats = length_disentangling(out, batch.response_lengths.to(out.length.device), length_penalty)
        loss = loss + penalty
    if engine is not None:
        engine.backward(loss)
        engine.step()
    else:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss.detach(), inputs, stats)


def ensemble_loss(flat: torch.Tensor, batch: ModelBatch, groups, loss_fn, offset: torch.Tensor | None = None):
    """The loss of each reward head, averaged; with one head this is just the loss. `offset` [N] is added to
    every head's rewards before its loss (the length head's, ODIN).
    Returns the loss and the LossInputs of the heads' mean reward without the offset, detached (accuracy
    bookkeeping of what is served)."""
    heads = flat.unsqueeze(-1) if flat.ndim == 1 else flat  # [N, heads]
    rewards, mask = batch.per_group(heads[:, 0])
    labels = LossInputs.from_groups(groups, rewards, mask)  # labels and mask do not depend on the rewards
    losses = []
    for head in range(heads.shape[1]):
        trained = heads[:, head] if offset is None else heads[:, head] + offset
        losses.append(loss_fn(dataclasses.replace(labels, rewards=batch.per_group(trained)[0])))
    served = batch.per_group(heads.detach().mean(dim=1))[0]
    return torch.stack(losses).mean(), dataclasses.replace(labels, rewards=served)


def length_disentangling(out, lengths: torch.Tensor, penalty: LengthPenalty) -> tuple[torch.Tensor, dict]:
    """ODIN's correlation terms over every response of the step (all workers, as ODIN all-gathers its global
    batch) plus the orthogonality term; returns the penalty and its logged parts."""
    quality = out.quality.float()
    quality = quality.unsqueeze(1) if quality.ndim == 1 else quality  # [N, K]
    local = torch.cat([quality, out.length.float().unsqueeze(1), lengths.to(quality.dtype).unsqueeze(1)], dim=1)
    world = _world_size()
    rows = _batch_wide(local) if world > 1 else local
    correlation, stats = penalty.correlation(rows[:, :-2], rows[:, -2], rows[:, -1])
    if world > 1:
        # DDP and ZeRO average gradients over workers, and each worker's gradient covers its own responses
        # only: scale the gradient (not the value) by the world size to recover the batch-wide gradient.
        correlation = correlation + (world - 1) * (correlation - correlation.detach())
    orthogonality, ortho_stats = penalty.orthogonality(out.head_cosine)
    return correlation + orthogonality, {**stats, **ortho_stats}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _batch_wide(local: torch.Tensor) -> torch.Tensor:
    """[n, C] rows of this worker → the rows of every worker in rank order (workers may hold different n);
    only this worker's rows carry gradients, the others are detached copies."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    width = int(max(c.item() for c in counts))
    padded = local.detach().new_zeros(width, local.shape[1])
    padded[: local.shape[0]] = local.detach()
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    parts = [part[: int(n.item())] for part, n in zip(gathered, counts)]
    parts[rank] = local
    return torch.cat(parts)


def build_optimizer(model: torch.nn.Module, trainer: TrainerConfig, total_steps: int):
    """AdamW over the model's parameter groups (the randomly initialised head at lr x head_lr_multiplier,
    no decay on biases and norms) and the configured schedule with linear warmup."""
    from transformers import get_scheduler

    params = parameter_groups(model)
    groups = [{"params": params["decay"], "weight_decay": trainer.weight_decay},
              {"params": params["no_decay"], "weight_decay": 0.0},
              # The head starts from random weights; a larger step lets it catch up with the backbone.
              {"params": params["head"], "weight_decay": 0.0, "lr": trainer.lr * trainer.head_lr_multiplier}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=trainer.lr, betas=tuple(trainer.betas))
    warmup = int(round(trainer.warmup_ratio * total_steps))
    scheduler = get_scheduler(trainer.lr_schedule, optimizer, num_warmup_steps=warmup,
                              num_training_steps=max(total_steps, 1))
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        # A streamed epoch's step count is an estimate: past it, hold the final rate (cosine would rise again).
        scheduler.lr_lambdas = [functools.partial(_held_after, fn, max(total_steps, 1)) for fn in scheduler.lr_lambdas]
    return optimizer, scheduler


def _held_after(fn, last: int, step: int) -> float:
    return fn(min(step, last))
