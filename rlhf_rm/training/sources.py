"""Where a worker's training steps come from: an epoch planned up front (in memory) or packed as it streams.

Both expose the same small interface to the recipe: total_steps, total_pairs, steps_in_epoch(epoch),
pairs_done(trained_steps) and steps(epoch, first) → (step in epoch, this worker's groups, groups in the
step on all workers).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from rlhf_rm.batching.planner import plan_steps, row_length
from rlhf_rm.batching.stream import packed_batches
from rlhf_rm.config import BatchingConfig

PACKING_EFFICIENCY = 0.85  # real / budgeted tokens of a streamed step, to estimate its step count


class PlannedSteps:
    """In-memory training data: every epoch planned up front (exact step counts and resume)."""

    def __init__(self, groups: list, plans: list, rank: int):
        self.groups, self.plans, self.rank = groups, plans, rank
        self.total_steps = sum(len(p) for p in plans)
        self.total_pairs = sum(len(shard) for plan in plans for assignment in plan for shard in assignment)

    @classmethod
    def plan(cls, groups: list, batching: BatchingConfig, epochs: int, world: int, rank: int, seed: int):
        """Plans are a pure function of (seed, epoch, world size): a resumed run replays them exactly."""
        lengths = [row_length(g, batching.layout) for g in groups]
        plans = [plan_steps(lengths, world, batching.tokens_per_worker, seed=seed + epoch,
                            max_groups_per_worker=batching.max_pairs_per_worker) for epoch in range(epochs)]
        return cls(groups, plans, rank)

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.plans[epoch])

    def pairs_done(self, trained_steps: list) -> int:
        return sum(len(shard) for epoch, s in trained_steps for shard in self.plans[epoch][s])

    def steps(self, epoch: int, first: int):
        plan = self.plans[epoch]
        for step_in_epoch in range(first, len(plan)):
            assignment = plan[step_in_epoch]
            yield step_in_epoch, [self.groups[i] for i in assignment[self.rank]], sum(len(a) for a in assignment)

    def leftover(self, device) -> int | None:
        return None  # every planned group is trained


class StreamedSteps:
    """Streamed training data: each worker packs its Ray Data shard; the workers agree each step that all
    still have a batch (DDP needs the same step count everywhere), so an epoch ends when one runs dry."""

    def __init__(self, shard, stream: dict, batching: BatchingConfig, epochs: int, seed: int, world: int, device):
        self.shard, self.layout, self.seed, self.world, self.device = shard, batching.layout, seed, world, device
        self.tokens_per_worker = batching.tokens_per_worker
        self.max_groups = batching.max_pairs_per_worker
        budget = world * self.tokens_per_worker * PACKING_EFFICIENCY
        self.estimate = max(1, math.ceil(stream["tokens"][self.layout] / budget))
        self.total_steps = self.estimate * epochs
        self.total_pairs = stream["groups"] * epochs
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

    def leftover(self, device) -> int:
        """Groups no worker trained on, summed over workers (a collective: every worker calls it)."""
        counts = torch.tensor([self.untrained], device=device)
        if self.world > 1:
            dist.all_reduce(counts)
        return int(counts[0])
