"""Plan batches by token budget: similar lengths together, balanced across data-parallel workers.

Every worker gets the same number of steps (collectives in DDP/ZeRO need that), and each step's
groups are dealt so that workers carry about the same number of tokens.
"""

from __future__ import annotations

import random


def row_length(group, layout: str) -> int:
    """Tokens one example costs in the chosen layout (the planner's budget unit)."""
    if layout in ("prefix_shared", "packed_shared"):
        return group.shared_length()
    if layout == "packed":  # no padding: each response with its own prompt copy
        return group.separate_length()
    return max(len(group.prompt_ids) + len(r) for r in group.response_ids) * len(group.response_ids)


def plan_steps(
    lengths: list[int],
    world_size: int,
    tokens_per_worker: int,
    seed: int = 0,
    shuffle: bool = True,
    sort_window: int = 512,
    max_groups_per_worker: int | None = None,
) -> list[list[list[int]]]:
    """Return steps; step[w] is the list of example indices worker w processes in that step.

    `lengths[i]` is the row length example i occupies in the chosen layout. A step holds as many
    examples as fit `world_size * tokens_per_worker` padded tokens (at least `world_size`).
    """
    if len(lengths) < world_size:
        raise ValueError(f"{len(lengths)} examples cannot feed {world_size} data-parallel workers")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    budget = world_size * tokens_per_worker
    steps: list[list[int]] = []
    for start in range(0, len(order), sort_window):
        # Sorting only within a window keeps randomness across the epoch while batching similar lengths.
        window = sorted(order[start : start + sort_window], key=lambda i: lengths[i])
        current: list[int] = []
        for index in window:
            longest = max(lengths[index], max((lengths[i] for i in current), default=0))
            rows_per_worker = -(-(len(current) + 1) // world_size)
            too_many = max_groups_per_worker is not None and rows_per_worker > max_groups_per_worker
            if len(current) >= world_size and (rows_per_worker * longest * world_size > budget or too_many):
                steps.append(current)
                current = []
            current.append(index)
        if current:
            steps.append(current)
    # A last step too small to give every worker an example joins its neighbour.
    merged: list[list[int]] = []
    for step in steps:
        if len(step) < world_size and merged:
            merged[-1].extend(step)
        else:
            merged.append(step)
    if shuffle:
        rng.shuffle(merged)
    return [_deal(step, world_size, lengths) for step in merged]


def _deal(step: list[int], world_size: int, lengths: list[int]) -> list[list[int]]:
    """Deal longest-first to the worker with the fewest tokens so far (LPT scheduling)."""
    shards: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for index in sorted(step, key=lambda i: -lengths[i]):
        # Among equally loaded workers prefer the one with fewer rows, so none stays empty.
        worker = min(range(world_size), key=lambda w: (loads[w], len(shards[w])))
        shards[worker].append(index)
        loads[worker] += lengths[index]
    return shards
