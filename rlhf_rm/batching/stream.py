"""Token-budget batches from a streamed dataset shard (data.streaming=true).

The in-memory path plans a whole epoch up front (batching.planner); a stream is seen a window at a
time, so each worker plans its own window: similar lengths together, shuffled, within the token budget.
"""

from __future__ import annotations

from typing import Iterator

from rlhf_rm.batching.arrow import table_to_groups
from rlhf_rm.batching.planner import plan_steps, row_length


def packed_batches(shard, layout: str, tokens_per_worker: int, seed: int, window: int = 2048,
                   max_groups: int | None = None) -> Iterator[list]:
    """Lists of EncodedGroups, each within `tokens_per_worker` padded tokens, from a Ray Data shard
    (or any iterable of Arrow tables via `iter_batches`)."""
    buffer: list = []
    for number, table in enumerate(shard.iter_batches(batch_size=512, batch_format="pyarrow")):
        buffer.extend(table_to_groups(table))
        if len(buffer) >= window:
            yield from _pack(buffer, layout, tokens_per_worker, seed + number, max_groups)
            buffer = []
    if buffer:
        yield from _pack(buffer, layout, tokens_per_worker, seed, max_groups)


def _pack(groups: list, layout: str, tokens_per_worker: int, seed: int, max_groups) -> Iterator[list]:
    lengths = [row_length(g, layout) for g in groups]
    for step in plan_steps(lengths, 1, tokens_per_worker, seed=seed, sort_window=len(groups),
                           max_groups_per_worker=max_groups):
        yield [groups[i] for i in step[0]]
