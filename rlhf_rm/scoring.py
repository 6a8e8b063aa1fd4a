"""Score (prompt, response) texts with a trained checkpoint: the one code path shared by CLI, eval and serving.

Every load re-scores the checkpoint's parity canaries (certificate.py) and refuses a model that no longer
gives the rewards it was saved with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.tokenize import EncodedGroup, ResponseEncoder
from rlhf_rm.data.examples import Text
from rlhf_rm.model import load_reward_model, load_tokenizer, read_metadata
from rlhf_rm.rendering import RenderingSpec

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ScoredText:
    score: float
    truncated: bool
    spread: float | None = None  # std across ensemble heads; None for a single-head model


def checkpoint_rendering(metadata: dict, tokenizer) -> RenderingSpec:
    """The checkpoint's rendering; checkpoints from before the spec existed stored max_length/append_eos."""
    spec = RenderingSpec.from_metadata(metadata)
    if spec is not None:
        return spec
    return RenderingSpec.for_tokenizer(tokenizer, metadata.get("max_length", 2048), metadata.get("append_eos", True))


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
        self.encoder = ResponseEncoder(self.tokenizer, spec=checkpoint_rendering(self.metadata, self.tokenizer))
        self.tokens_per_batch = tokens_per_batch
        self.certified = False
        if verify:
            from rlhf_rm.certificate import verify_certificate

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

    @torch.no_grad()
    def score_encoded_with_spread(self, encoded: list[EncodedGroup]) -> tuple[list[float], list[float] | None]:
        """(scores, spreads): spreads are the std across ensemble heads, None for a single head."""
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].shared_length())
        scores = [0.0] * len(encoded)
        spreads = [0.0] * len(encoded) if self.ensemble_size > 1 else None
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * encoded[order[end]].shared_length() <= self.tokens_per_batch:
                end += 1
            chunk = order[start:end]
            batch = collate([encoded[i] for i in chunk], self.tokenizer.pad_token_id, layout="separate")
            rewards = self.model(**{k: v.to(self.device) for k, v in batch.model_inputs().items()}).float().cpu()
            if rewards.ndim == 2:
                for index, value in zip(chunk, rewards.std(dim=1, unbiased=False).tolist()):
                    spreads[index] = value
                rewards = rewards.mean(dim=1)
            for index, value in zip(chunk, rewards.tolist()):
                scores[index] = value
            start = end
        return scores, spreads

    def score(self, prompts: list[Text], responses: list[Text]) -> list[ScoredText]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        values, spreads = self.score_encoded_with_spread(encoded)
        return [ScoredText(v, e.prompt_truncated or e.response_truncated, None if spreads is None else spreads[i])
                for i, (v, e) in enumerate(zip(values, encoded))]
