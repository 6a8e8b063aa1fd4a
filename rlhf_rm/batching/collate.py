"""Lay out groups of (prompt, K responses) as model inputs.

Four layouts give the same rewards (tested):
  separate       one right-padded row per response, each with its own copy of the prompt
                 (what common trainers do);
  prefix_shared  one row per group: prompt, then every response; a tree attention mask lets each
                 response see the prompt and itself only, and position ids restart after the prompt,
                 so the prompt is computed once;
  packed         OpenRLHF's packing_samples: every (prompt + response) a document of its own, documents
                 concatenated into rows with a block-diagonal causal mask, no padding but at row ends
                 (the prompt computed once per response);
  packed_shared  several groups per row, each a tree as in prefix_shared, block-diagonal between groups:
                 no padding and the prompt computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_rm.batching.tokenize import EncodedGroup

LAYOUTS = ("prefix_shared", "separate", "packed", "packed_shared")


@dataclass
class ModelBatch:
    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor  # [rows, T] (separate) or bool [rows, 1, T, T] (prefix_shared)
    position_ids: torch.Tensor  # [rows, T]
    score_rows: torch.Tensor  # [N] row of each scored response's last token
    score_cols: torch.Tensor  # [N] column of that token
    group_sizes: list[int]  # K of each group; scored responses come group by group, in input order
    real_tokens: int  # non-pad tokens in the batch, for throughput reports
    segment_ids: torch.Tensor | None = None  # tree layouts: 0 prompt, k + 1 response k, -1 pad (flex_mask)
    document_ids: torch.Tensor | None = None  # tree layouts: which unit (group, or response for packed) of the row
    response_lengths: torch.Tensor | None = None  # [N] response tokens of each scored response (length head loss)

    def model_inputs(self, flex: bool = False) -> dict:
        """Keyword arguments of RewardModel.forward; `flex`: the segments instead of the dense mask."""
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "score_rows": self.score_rows,
                  "score_cols": self.score_cols}
        if flex:
            if self.segment_ids is None:
                raise ValueError("FlexAttention needs a tree layout (prefix_shared, packed or packed_shared)")
            return {**inputs, "attention_mask": None, "segment_ids": self.segment_ids,
                    "document_ids": self.document_ids}
        return {**inputs, "attention_mask": self.attention_mask}

    def per_group(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat rewards [N] → padded [groups, K_max] and a mask of the real entries."""
        k_max = max(self.group_sizes)
        sizes = torch.tensor(self.group_sizes, device=rewards.device)
        mask = torch.arange(k_max, device=rewards.device).unsqueeze(0) < sizes.unsqueeze(1)
        matrix = rewards.new_zeros(len(self.group_sizes), k_max).masked_scatter(mask, rewards)
        return matrix, mask


def collate(groups: list[EncodedGroup], pad_id: int, layout: str = "prefix_shared",
            row_tokens: int | None = None) -> ModelBatch:
    """`row_tokens` caps a packed row's width (packed layouts only; None: one row for the whole batch)."""
    batch = _collate_layout(groups, pad_id, layout, row_tokens)
    # Every layout scores the responses group by group, in input order: one length list fits them all.
    batch.response_lengths = torch.tensor([n for g in groups for n in g.lengths()], dtype=torch.long)
    return batch


def _collate_layout(groups: list[EncodedGroup], pad_id: int, layout: str, row_tokens: int | None) -> ModelBatch:
    if layout == "prefix_shared":
        return _collate_units([[(g.prompt_ids, g.response_ids)] for g in groups], groups, pad_id)
    if layout == "separate":
        return _collate_separate(groups, pad_id)
    if layout == "packed":  # OpenRLHF's packing_samples: every response with its own copy of the prompt
        units = [(g.prompt_ids, [r]) for g in groups for r in g.response_ids]
        return _collate_units(_pack_rows(units, row_tokens), groups, pad_id)
    if layout == "packed_shared":  # several groups per row, each group's prompt computed once
        units = [(g.prompt_ids, g.response_ids) for g in groups]
        return _collate_units(_pack_rows(units, row_tokens), groups, pad_id)
    raise ValueError(f"unknown batch layout {layout!r}; choose one of {LAYOUTS}")


def _unit_length(unit) -> int:
    prompt, responses = unit
    return len(prompt) + sum(len(r) for r in responses)


def _pack_rows(units: list, row_tokens: int | None) -> list[list]:
    """Fill rows in order (a group's responses stay in order) up to row_tokens; no padding but at row ends."""
    rows: list[list] = [[]]
    width = 0
    for unit in units:
        length = _unit_length(unit)
        if rows[-1] and row_tokens is not None and width + length > row_tokens:
            rows.append([])
            width = 0
        rows[-1].append(unit)
        width += length
    return rows if rows[0] else []


def _collate_separate(groups: list[EncodedGroup], pad_id: int) -> ModelBatch:
    sequences = [g.prompt_ids + r for g in groups for r in g.response_ids]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    lengths = torch.tensor([len(s) for s in sequences])
    position_ids = torch.arange(width).expand(len(sequences), width).clone()
    return ModelBatch(input_ids, attention_mask, position_ids,
                      score_rows=torch.arange(len(sequences)), score_cols=lengths - 1,
                      group_sizes=[len(g.response_ids) for g in groups], real_tokens=int(lengths.sum()))


def _collate_units(rows: list[list], groups: list[EncodedGroup], pad_id: int) -> ModelBatch:
    """Rows of units (prompt, responses), each unit a tree: the prompt causal, every response sees the whole
    prompt and itself causally, never a sibling nor another unit; positions restart at each unit."""
    width = max(sum(_unit_length(u) for u in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    # Pad positions attend to themselves only, so no attention row is empty (an all-masked row gives NaN).
    mask = torch.eye(width, dtype=torch.bool).expand(len(rows), width, width).clone()
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    documents = torch.full((len(rows), width), -1, dtype=torch.long)
    score_rows, score_cols = [], []
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row, units in enumerate(rows):
        start = 0
        for document, (prompt, responses) in enumerate(units):
            p = len(prompt)
            end = start + p
            input_ids[row, start:end] = torch.tensor(prompt, dtype=torch.long)
            position_ids[row, start:end] = torch.arange(p)
            mask[row, start:end, start:end] = causal[:p, :p]
            segments[row, start:end] = 0
            documents[row, start:end] = document
            prompt_start = start
            for k, response in enumerate(responses):
                begin, n = end, len(response)
                end = begin + n
                input_ids[row, begin:end] = torch.tensor(response, dtype=torch.long)
                position_ids[row, begin:end] = torch.arange(p, p + n)
                mask[row, begin:end, prompt_start:prompt_start + p] = True  # every response sees its prompt
                mask[row, begin:end, begin:end] = causal[:n, :n]  # and itself, causally; never a sibling
                segments[row, begin:end] = k + 1
                documents[row, begin:end] = document
                score_rows.append(row)
                score_cols.append(end - 1)
            start = end
    real = sum(_unit_length(u) for units in rows for u in units)
    return ModelBatch(input_ids, mask.unsqueeze(1), position_ids,
                      score_rows=torch.tensor(score_rows), score_cols=torch.tensor(score_cols),
                      group_sizes=[len(g.response_ids) for g in groups], real_tokens=real, segment_ids=segments,
                      document_ids=documents)
