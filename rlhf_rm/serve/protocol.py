"""Wire formats of the pool: request bodies, their validation, and the response shapes each caller expects.

Three HTTP dialects map onto one scoring call `score(prompts, responses)`:
  /score       ours: prompt/response pairs, strings or chat message lists
  /get_reward  OpenRLHF remote RM: full texts in `query`, optional `prompts` to split them
  /classify    vLLM-style classify (veRL's reward loop): full texts in `input`
A full text is scored as a prompt with an empty response, so truncation cuts it from the left
(keeping its end, where the reply is) exactly as training cuts an over-long prompt.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class BadRequest(ValueError):
    """The caller's input is wrong; HTTP answers 400 (413 when `too_large`), the handle raises it as is."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


Text = Union[str, list[ChatMessage]]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    responses: list[Text] = Field(description="replies to score: strings or chat message lists")
    prompts: Optional[list[Text]] = Field(None, description="one per response; omitted means empty prompts")
    normalize: Optional[bool] = Field(None, description="null: the pool's default")


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote RM body; `labels` is accepted for compatibility and unused by a learned RM."""

    query: list[str]
    prompts: Optional[list[str]] = None
    labels: Optional[list[Any]] = None
    normalize: Optional[bool] = None


class ClassifyRequest(BaseModel):
    model: Optional[str] = None  # echoed back; the pool serves one model
    input: Union[str, list[str]]
    normalize: Optional[bool] = None


def plain(text: Any) -> Any:
    """Pydantic chat messages back to the plain dicts the encoder renders."""
    if isinstance(text, list):
        return [m.model_dump() if isinstance(m, BaseModel) else m for m in text]
    return text


def check_pairs(prompts: list | None, responses: list, max_texts: int) -> list:
    """Validate a scoring call (handle or HTTP); returns the prompts, empty strings where none were given."""
    if not isinstance(responses, list):
        raise BadRequest(f"responses must be a list, got {type(responses).__name__}")
    if len(responses) > max_texts:
        raise BadRequest(f"{len(responses)} texts in one request; the limit is {max_texts} "
                         "(split the call; RewardClient does this itself)", too_large=True)
    if prompts is None:
        prompts = [""] * len(responses)
    if not isinstance(prompts, list) or len(prompts) != len(responses):
        raise BadRequest(f"prompts must be a list as long as responses ({len(responses)})")
    for name, texts in (("prompts", prompts), ("responses", responses)):
        for i, text in enumerate(texts):
            if isinstance(text, str):
                continue
            if not isinstance(text, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in text):
                raise BadRequest(f"{name}[{i}] must be a string or a list of {{role, content}} messages")
    return prompts


def split_queries(query: list[str], prompts: list[str] | None) -> tuple[list[str], list[str]]:
    """OpenRLHF sends prompt+response as one string; split at the prompt when it is given and matches."""
    if prompts is None:
        return list(query), [""] * len(query)
    if len(prompts) != len(query):
        raise BadRequest(f"prompts has {len(prompts)} items but query has {len(query)}")
    split_prompts, responses = [], []
    for full, prompt in zip(query, prompts):
        if prompt and full.startswith(prompt):
            split_prompts.append(prompt)
            responses.append(full[len(prompt):])
        else:
            split_prompts.append(full)
            responses.append("")
    return split_prompts, responses


def classify_response(result: dict, model: str) -> dict:
    """vLLM's ClassificationResponse shape: one class, its 'probability' being the raw (or normalized) reward."""
    data = [{"index": i, "label": "reward", "probs": [score], "num_classes": 1}
            for i, score in enumerate(result["scores"])]
    tokens = sum(result["tokens"])
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            "normalized": result["normalized"], "truncated": result["truncated"]}
