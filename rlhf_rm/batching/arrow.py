"""Encoded groups as Arrow tables, one row per group: the layout of the tokenized cache and the streamed shards."""

from __future__ import annotations

from rlhf_rm.batching.tokenize import EncodedGroup


def groups_to_table(groups: list[EncodedGroup]):
    """Encoded groups as an Arrow table, one row per group (also the streamed shards' layout)."""
    import pyarrow as pa

    return pa.table({
        "prompt_ids": pa.array([g.prompt_ids for g in groups], pa.list_(pa.int32())),
        "response_ids": pa.array([g.response_ids for g in groups], pa.list_(pa.list_(pa.int32()))),
        "prompt_truncated": pa.array([g.prompt_truncated for g in groups], pa.bool_()),
        "response_truncated": pa.array([g.response_truncated for g in groups], pa.bool_()),
        "kind": pa.array([g.kind for g in groups], pa.string()),
        "ranks": pa.array([list(g.ranks) for g in groups], pa.list_(pa.int32())),
        "probability": pa.array([g.probability for g in groups], pa.float64()),
        "margin": pa.array([g.margin for g in groups], pa.float64()),
        "score": pa.array([g.score for g in groups], pa.float64()),
        "source": pa.array([g.source for g in groups], pa.string()),
        "response_lengths": pa.array([g.lengths() for g in groups], pa.list_(pa.int32())),
    })


def table_to_groups(table) -> list[EncodedGroup]:
    columns = table.to_pydict()
    missing = [None] * table.num_rows  # shards written before a column existed
    return [EncodedGroup(prompt_ids=p, response_ids=r, prompt_truncated=pt, response_truncated=rt, kind=k,
                         ranks=tuple(ra), probability=pr, margin=m, score=sc, source=s, response_lengths=n)
            for p, r, pt, rt, k, ra, pr, m, sc, s, n in zip(
                columns["prompt_ids"], columns["response_ids"], columns["prompt_truncated"],
                columns["response_truncated"], columns["kind"], columns["ranks"], columns["probability"],
                columns["margin"], columns.get("score", missing), columns["source"],
                # without response_lengths, lengths fall back to len(response_ids)
                columns.get("response_lengths", missing))]
