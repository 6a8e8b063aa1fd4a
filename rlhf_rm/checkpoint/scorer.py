"""Score (prompt, response) texts with a trained checkpoint: the one code path shared by CLI, eval and serving,
and `score_groups`, the no-grad scoring pass training's evaluation runs too (the only copy).

Every load re-scores the checkpoint's parity canaries (certificate.py) and refuses a model that no longer
gives the rewards it was saved with.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import torch

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.planner import row_length
from rlhf_rm.batching.tokenize import EncodedGroup, ResponseEncoder
from rlhf_rm.checkpoint.certificate import verify_certificate
from rlhf_rm.checkpoint.metadata import read_metadata
from rlhf_rm.checkpoint.rendering import RenderingSpec
from rlhf_rm.data.examples import Text
from rlhf_rm.model import load_reward_model, load_tokenizer

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ScoredText:
    score: float
    truncated: bool
    spread: float | None = None  # std across ensemble heads; None for a single-head model


def split_group(group: EncodedGroup, max_tokens: int) -> list[EncodedGroup]:
    """The group as consecutive slices of its responses, each with the whole prompt and at most `max_tokens`
    tokens (a response that alone exceeds it gets a slice of its own). Each response still sees exactly
    prompt + itself, so the scores equal the unsplit group's."""
    if group.shared_length() <= max_tokens or len(group.response_ids) == 1:
        return [group]
    slices, start, used = [], 0, len(group.prompt_ids)
    for position, ids in enumerate(group.response_ids):
        if position > start and used + len(ids) > max_tokens:
            slices.append(slice(start, position))
            start, used = position, len(group.prompt_ids)
        used += len(ids)
    slices.append(slice(start, len(group.response_ids)))
    lengths = group.response_lengths
    return [replace(group, response_ids=group.response_ids[cut], ranks=tuple(range(cut.stop - cut.start)),
                    response_lengths=None if lengths is None else lengths[cut]) for cut in slices]


class RewardScorer:
    def __init__(self, checkpoint: str, tokens_per_batch: int = 8192, device: str = "cpu",
                 dtype: str = "float32", verify: bool = True):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; choose one of {sorted(DTYPES)}")
        self.checkpoint = checkpoint
        self.metadata = read_metadata(checkpoint)
        self.tokenizer = load_tokenizer(checkpoint)
        self.model = load_reward_model(checkpoint, self.tokenizer, dtype=DTYPES[dtype]).to(device).eval()
        self.device, self.dtype = device, dtype
        self.encoder = ResponseEncoder(self.tokenizer, spec=self.metadata.rendering_spec(self.tokenizer))
        self.tokens_per_batch = tokens_per_batch
        self.certified = False
        if verify:
            self.certified = verify_certificate(self)

    @property
    def spec(self) -> RenderingSpec:
        return self.encoder.spec

    def encode(self, prompt: Text, response: Text) -> EncodedGroup:
        return self.encoder.encode_group(prompt, [response])

    @property
    def ensemble_size(self) -> int:
        return int(self.model.hf_model.config.num_labels)

    def score_encoded(self, encoded: list[EncodedGroup]) -> list[float]:
        """Score many texts; batches are formed from similar lengths so little compute goes to padding.
        A text's score does not depend on its batch mates (padding is masked, positions start at 0).
        An ensemble's score is the mean of its heads."""
        return self.score_encoded_with_spread(encoded)[0]

    def score_encoded_with_spread(self, encoded: list[EncodedGroup]) -> tuple[list[float], list[float] | None]:
        """(scores, spreads) of single-response groups: spreads are the std across ensemble heads, None for
        a single head."""
        scores, spreads = self.score_groups_with_spread(encoded)
        return [s[0] for s in scores], None if spreads is None else [s[0] for s in spreads]

    def score_groups_with_spread(self, groups: list[EncodedGroup]) -> tuple[list[list[float]], list | None]:
        """Rewards of every response of every group. A group of n responses to one prompt is one row of the
        prefix-shared layout (the prompt computed once, exact: each response sees what it would alone), split
        into rows of at most `tokens_per_batch` tokens (the prompt repeated in each: a row's attention mask is
        T x T); single texts go in padded rows. Batches are cut by `tokens_per_batch` from similar lengths."""
        pieces = [(index, piece) for index, group in enumerate(groups)
                  for piece in split_group(group, self.tokens_per_batch)]
        scores: list = [[] for _ in groups]
        spreads: list | None = [[] for _ in groups] if self.ensemble_size > 1 else None
        singles = [i for i, (_, g) in enumerate(pieces) if len(g.response_ids) == 1]
        shared = [i for i, (_, g) in enumerate(pieces) if len(g.response_ids) > 1]
        piece_scores: list = [None] * len(pieces)
        piece_spreads: list = [None] * len(pieces)
        for indices, layout in ((singles, "separate"), (shared, "prefix_shared")):
            if not indices:
                continue
            result = score_groups(self.model, [pieces[i][1] for i in indices], self.tokenizer.pad_token_id,
                                  layout=layout, tokens_per_batch=self.tokens_per_batch, device=self.device)
            for position, index in enumerate(indices):
                piece_scores[index] = result.rewards[position]
                if spreads is not None:
                    piece_spreads[index] = result.spreads[position]
        for position, (index, _) in enumerate(pieces):  # pieces are in response order within each group
            scores[index].extend(piece_scores[position])
            if spreads is not None:
                spreads[index].extend(piece_spreads[position])
        return scores, spreads

    def score_group(self, prompt: Text, responses: list[Text]) -> list[ScoredText]:
        """n responses to one prompt in one prefix-shared forward; equal to scoring each text alone."""
        group = self.encoder.encode_group(prompt, list(responses))
        scores, spreads = self.score_groups_with_spread([group])
        truncated = group.prompt_truncated or group.response_truncated
        return [ScoredText(v, truncated, None if spreads is None else spreads[0][i]) for i, v in enumerate(scores[0])]

    def score(self, prompts: list[Text], responses: list[Text]) -> list[ScoredText]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        values, spreads = self.score_encoded_with_spread(encoded)
        return [ScoredText(v, e.prompt_truncated or e.response_truncated, None if spreads is None else spreads[i])
                for i, (v, e) in enumerate(zip(values, encoded))]


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
