"""The training step and the scoring pass: the only copies, called by the trainer and every benchmark.

    train_step(model, batch, groups, loss_fn, optimizer, scheduler)  one optimizer step on a ModelBatch
    score_groups(model, groups, pad_id)                              no-grad rewards of encoded groups
    build_optimizer(model, trainer_settings, total_steps)            AdamW + LR schedule
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from rlhf_rm.batching.collate import ModelBatch, collate
from rlhf_rm.batching.planner import row_length
from rlhf_rm.batching.tokenize import EncodedGroup
from rlhf_rm.config import TrainerConfig
from rlhf_rm.losses import LossInputs
from rlhf_rm.model_state import parameter_groups


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached scalar (reading it syncs the device; the caller decides when)
    inputs: LossInputs  # the heads' mean rewards per group, detached: accuracy bookkeeping


def train_step(model, batch: ModelBatch, groups: Sequence[EncodedGroup], loss_fn: Callable, optimizer,
               scheduler=None, *, engine=None, device: torch.device | str = "cpu", max_grad_norm: float | None = None,
               flex: bool = False, autocast: Callable = nullcontext) -> StepOutput:
    """Forward the batch, the loss of every reward head, backward, clip, optimizer and scheduler step.

    `model` is what runs the forward (the RewardModel, its DDP wrapper or a DeepSpeed engine); with
    `engine` DeepSpeed does backward, clipping and both steps itself. `max_grad_norm=None`: no clipping.
    """
    model.train()
    with autocast():
        flat = model(**{k: v.to(device, non_blocking=True) for k, v in batch.model_inputs(flex).items()})
    loss, inputs = ensemble_loss(flat.float(), batch, groups, loss_fn)
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
    return StepOutput(loss.detach(), inputs)


def ensemble_loss(flat: torch.Tensor, batch: ModelBatch, groups, loss_fn):
    """The loss of each reward head, averaged; with one head this is just the loss.
    Returns the loss and the LossInputs of the heads' mean reward, detached (for accuracy bookkeeping)."""
    heads = flat.unsqueeze(-1) if flat.ndim == 1 else flat  # [N, heads]
    losses, per_head = [], None
    for head in range(heads.shape[1]):
        rewards, mask = batch.per_group(heads[:, head])
        per_head = LossInputs.from_groups(groups, rewards, mask)
        losses.append(loss_fn(per_head))
    if heads.shape[1] == 1:  # the mean of one head is that head: reuse its labels
        return losses[0], dataclasses.replace(per_head, rewards=per_head.rewards.detach())
    rewards, mask = batch.per_group(heads.detach().mean(dim=1))
    return torch.stack(losses).mean(), LossInputs.from_groups(groups, rewards, mask)


@dataclass
class GroupScores:
    rewards: list  # rewards[i]: group i's reward per response (None for groups no batch named)
    spreads: list | None  # the same shape: std across ensemble heads; None for a single-head model


@torch.no_grad()
def score_groups(model, groups: Sequence[EncodedGroup], pad_id: int, *, layout: str = "prefix_shared",
                 batches: Iterable[list[int]] | None = None, tokens_per_batch: int = 8192,
                 device: torch.device | str = "cpu", autocast: Callable = nullcontext,
                 flex: bool = False) -> GroupScores:
    """Rewards of encoded groups: batched, no-grad forwards; an ensemble's reward is its heads' mean.

    `batches`: lists of group indices, one forward each (the trainer passes its worker's share of an
    evaluation plan, so every worker runs the same number of forwards); by default groups are sorted by
    length and cut into batches of at most `tokens_per_batch` padded tokens. A group's rewards do not
    depend on its batch mates (padding is masked, positions restart per row).
    """
    model.eval()
    if batches is None:
        batches = length_sorted_batches(groups, layout, tokens_per_batch)
    rewards: list = [None] * len(groups)
    spreads: list | None = None
    for indices in batches:
        batch = collate([groups[i] for i in indices], pad_id, layout)
        with autocast():
            heads = model(**{k: v.to(device) for k, v in batch.model_inputs(flex).items()}).float().cpu()
        if heads.ndim == 2:  # an ensemble: the reward is the heads' mean, their spread its uncertainty
            spreads = spreads or [None] * len(groups)
            spread, _ = batch.per_group(heads.std(dim=1, unbiased=False))
            heads = heads.mean(dim=1)
        matrix, mask = batch.per_group(heads)
        for row, index in enumerate(indices):
            rewards[index] = matrix[row][mask[row]].tolist()
            if spreads is not None:
                spreads[index] = spread[row][mask[row]].tolist()
    return GroupScores(rewards, spreads)


def length_sorted_batches(groups: Sequence[EncodedGroup], layout: str, tokens_per_batch: int) -> list[list[int]]:
    """Group indices sorted by length, cut greedily so each batch's padded size fits the budget
    (a group longer than the budget gets a batch of its own)."""
    order = sorted(range(len(groups)), key=lambda i: row_length(groups[i], layout))
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * row_length(groups[order[end]], layout) <= tokens_per_batch:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


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
