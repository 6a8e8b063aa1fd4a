"""Lay out groups of (prompt, K responses) as model inputs.

Two layouts give the same rewards (tested):
  separate       one right-padded row per response, each with its own copy of the prompt
                 (what common trainers do);
  prefix_shared  one row per group: prompt, then every response; a tree attention mask lets each
                 response see the prompt and itself only, and position ids restart after the prompt,
                 so the prompt is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_rm.batching.tokenize import EncodedGroup

LAYOUTS = ("prefix_shared", "separate")


@dataclass
class ModelBatch:
    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor  # [rows, T] (separate) or bool [rows, 1, T, T] (prefix_shared)
    position_ids: torch.Tensor  # [rows, T]
    score_rows: torch.Tensor  # [N] row of each scored response's last token
    score_cols: torch.Tensor  # [N] column of that token
    group_sizes: list[int]  # K of each group; scored responses come group by group, in input order
    real_tokens: int  # non-pad tokens in the batch, for throughput reports
    segment_ids: torch.Tensor | None = None  # prefix_shared: 0 prompt, k + 1 response k, -1 pad (flex_mask)

    def model_inputs(self, flex: bool = False) -> dict:
        """Keyword arguments of RewardModel.forward; `flex`: the segments instead of the dense mask."""
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "score_rows": self.score_rows,
                  "score_cols": self.score_cols}
        if flex:
            if self.segment_ids is None:
                raise ValueError("FlexAttention needs the prefix_shared layout (trainer.layout=prefix_shared)")
            return {**inputs, "attention_mask": None, "segment_ids": self.segment_ids}
        return {**inputs, "attention_mask": self.attention_mask}

    def per_group(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat rewards [N] → padded [groups, K_max] and a mask of the real entries."""
        k_max = max(self.group_sizes)
        sizes = torch.tensor(self.group_sizes, device=rewards.device)
        mask = torch.arange(k_max, device=rewards.device).unsqueeze(0) < sizes.unsqueeze(1)
        matrix = rewards.new_zeros(len(self.group_sizes), k_max).masked_scatter(mask, rewards)
        return matrix, mask


def collate(groups: list[EncodedGroup], pad_id: int, layout: str = "prefix_shared") -> ModelBatch:
    if layout == "prefix_shared":
        return _collate_prefix_shared(groups, pad_id)
    if layout == "separate":
        return _collate_separate(groups, pad_id)
    raise ValueError(f"unknown batch layout {layout!r}; choose one of {LAYOUTS}")


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


def _collate_prefix_shared(groups: list[EncodedGroup], pad_id: int) -> ModelBatch:
    width = max(g.shared_length() for g in groups)
    rows = len(groups)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    # Pad positions attend to themselves only, so no attention row is empty (an all-masked row gives NaN).
    mask = torch.eye(width, dtype=torch.bool).expand(rows, width, width).clone()
    segments = torch.full((rows, width), -1, dtype=torch.long)
    score_rows, score_cols = [], []
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row, group in enumerate(groups):
        p = len(group.prompt_ids)
        input_ids[row, :p] = torch.tensor(group.prompt_ids, dtype=torch.long)
        position_ids[row, :p] = torch.arange(p)
        mask[row, :p, :p] = causal[:p, :p]
        segments[row, :p] = 0
        start = p
        for k, response in enumerate(group.response_ids):
            n = len(response)
            end = start + n
            input_ids[row, start:end] = torch.tensor(response, dtype=torch.long)
            position_ids[row, start:end] = torch.arange(p, p + n)
            mask[row, start:end, :p] = True  # every response sees the whole prompt
            mask[row, start:end, start:end] = causal[:n, :n]  # and itself, causally; never its siblings
            segments[row, start:end] = k + 1
            score_rows.append(row)
            score_cols.append(end - 1)
            start = end
    real = sum(g.shared_length() for g in groups)
    return ModelBatch(input_ids, mask.unsqueeze(1), position_ids,
                      score_rows=torch.tensor(score_rows), score_cols=torch.tensor(score_cols),
                      group_sizes=[len(g.response_ids) for g in groups], real_tokens=real, segment_ids=segments)
