"""Wire formats of the pool: request bodies, their validation, and the response shapes each caller expects.

HTTP dialects that map onto one scoring call `score(prompts, responses)`:
  /score          ours: prompt/response pairs, strings or chat message lists
  /score_group    ours: one prompt, n responses, scored in one prefix-shared forward (GRPO/RLOO groups)
  /get_reward     OpenRLHF remote RM: full texts in `query`, optional `prompts` to split them
  /classify       vLLM-style (`input` → `data[i].probs`, veRL's reward loop) or SGLang-style
                  (`text` → `[{"embedding": [r]}]`, veRL's SGLang backend, Skywork-Reward-V2's recipe)
  /v1/embeddings  OpenAI embeddings shape (`input` → `data[i].embedding`; veRL reads `embedding[-1]`)
  /pooling        vLLM's PoolingResponse (`input` → `data[i].data = [[r]]`; InternLM POLAR reads
                  `data[i]["data"][-1][0]`), or with the live setting `pooling_shape=lmdeploy` LMDeploy's
                  (`data[i].data = r`, POLAR's lmdeploy reader)
  /reward         slime's `remote_rm`: one sample `{"prompt", "response", "label"}` → the reward as a bare number
A full text is scored as a prompt with an empty response, so truncation cuts it from the left
(keeping its end, where the reply is) exactly as training cuts an over-long prompt.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve.exceptions import BackPressureError


class BadRequest(ValueError):
    """The caller's input is wrong; HTTP answers 400 (413 when `too_large`), the handle raises it as is."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


class PoolOverloaded(BackPressureError):
    """A replica refused a request because the work queued before it would take longer than `max_queue_s`:
    retry after `retry_after_s` (HTTP: 503 + Retry-After). A `BackPressureError`, like Serve's own refusal
    when `max_queued_requests` is exceeded, so callers retry both the same way."""

    def __init__(self, queued_s: float, max_queue_s: float, retry_after_s: float):
        Exception.__init__(self, queued_s, max_queue_s, retry_after_s)  # args: how a RayTaskError re-creates it
        self._message = (f"pool overloaded: ~{queued_s:.1f} s of work queued on this replica, over max_queue_s="
                         f"{max_queue_s:g}; retry after {retry_after_s:g} s")
        self._status_code = 503
        self._retry_after_s = retry_after_s


def text_chars(text: Any) -> int:
    """Characters of a prompt or response (a chat: its contents together), known before tokenizing."""
    return len(text) if isinstance(text, str) else sum(len(m["content"]) for m in text)


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
    """vLLM sends `input`; SGLang sends `text` (and gets SGLang's response shape back)."""

    model: Optional[str] = None  # echoed back; the pool serves one model
    input: Optional[Union[str, list[str]]] = None
    text: Optional[Union[str, list[str]]] = None
    normalize: Optional[bool] = None

    @model_validator(mode="after")
    def _one_dialect(self):
        if (self.input is None) == (self.text is None):
            raise ValueError("send exactly one of 'input' (vLLM) or 'text' (SGLang)")
        return self

    def texts(self) -> list[str]:
        value = self.input if self.input is not None else self.text
        return [value] if isinstance(value, str) else list(value)


class EmbeddingsRequest(BaseModel):
    """OpenAI /v1/embeddings body as veRL's reward client sends it; the 'embedding' is [reward]."""

    model: Optional[str] = None
    input: Union[str, list[str]]
    encoding_format: Optional[str] = None  # "float" only: the reward is a plain number
    normalize: Optional[bool] = None


class ScoreGroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text = Field(description="the shared prompt: a string or chat messages")
    responses: list[Text] = Field(description="n replies to it, strings or chat message lists")
    normalize: Optional[bool] = Field(None, description="null: the pool's default")
    advantages: Optional[str] = Field(None, description="null | 'grpo' ((r − mean) / std) | 'rloo' (r − mean of the others)")


def plain(text: Any) -> Any:
    """Pydantic chat messages back to the plain dicts the encoder renders."""
    if isinstance(text, list):
        return [m.model_dump() if isinstance(m, BaseModel) else m for m in text]
    return text


def check_pairs(prompts: list | None, responses: list, max_texts: int, max_chars: int | None = None) -> list:
    """Validate a scoring call (handle or HTTP); returns the prompts, empty strings where none were given.
    `max_chars`: the longest prompt or response (a chat: its contents together), checked before any tokenizing."""
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
    if max_chars is not None:
        for name, texts in (("prompts", prompts), ("responses", responses)):
            for i, text in enumerate(texts):
                size = text_chars(text)
                if size > max_chars:
                    raise BadRequest(f"{name}[{i}] has {size:,} characters, over the limit max_text_chars="
                                     f"{max_chars:,}", too_large=True)
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


def group_advantages(scores: list[float], kind: str | None) -> list[float] | None:
    """Group-normalized advantages of n rewards to one prompt: GRPO (r − mean) / (std + 1e-6), population std;
    RLOO r_i − mean of the other n − 1."""
    if kind is None:
        return None
    n = len(scores)
    mean = sum(scores) / n if n else 0.0
    if kind == "grpo":
        std = (sum((s - mean) ** 2 for s in scores) / n) ** 0.5 if n else 0.0
        return [(s - mean) / (std + 1e-6) for s in scores]
    if kind == "rloo":
        if n < 2:
            raise BadRequest("rloo advantages need at least 2 responses")
        total = sum(scores)
        return [s - (total - s) / (n - 1) for s in scores]
    raise BadRequest(f"advantages={kind!r}; choose null, 'grpo' or 'rloo'")


def sglang_classify_response(result: dict) -> list[dict]:
    """SGLang's /classify answer: one object per text, the reward as a one-element 'embedding'."""
    return [{"embedding": [score], "meta_info": {"prompt_tokens": tokens, "truncated": truncated}}
            for score, tokens, truncated in zip(result["scores"], result["tokens"], result["truncated"])]


def embeddings_response(result: dict, model: str) -> dict:
    """OpenAI embeddings shape; veRL reads data[i].embedding[-1]."""
    tokens = sum(result["tokens"])
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": [score]} for i, score in enumerate(result["scores"])],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "normalized": result["normalized"]}


def classify_response(result: dict, model: str) -> dict:
    """vLLM's ClassificationResponse shape: one class, its 'probability' being the raw (or normalized) reward."""
    data = [{"index": i, "label": "reward", "probs": [score], "num_classes": 1}
            for i, score in enumerate(result["scores"])]
    tokens = sum(result["tokens"])
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            "normalized": result["normalized"], "truncated": result["truncated"]}


class PoolingRequest(BaseModel):
    """vLLM's and LMDeploy's /pooling body as InternLM POLAR's client sends it: `{"input": texts}` (POLAR,
    src/polar/reward_func.py, `vllm_request_reward` / `lmdeploy_request_reward`); `model` is optional there
    and echoed back. Token-id inputs, which both servers also take, are refused: the pool renders text."""

    model: Optional[str] = None
    input: Union[str, list[str]]
    encoding_format: Optional[str] = None  # "float" only
    normalize: Optional[bool] = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


POOLING_SHAPES = ("vllm", "lmdeploy")


def pooling_response(result: dict, model: str, shape: str) -> dict:
    """The /pooling answer. vLLM (vllm/entrypoints/openai/protocol.py, `PoolingResponseData.data:
    list[list[float]] | list[float] | str`): a reward model's data is one row per pooled token, each row its
    labels; the pool pools only the last token, so `data = [[reward]]` and POLAR's `data[-1][0]` is the reward.
    LMDeploy (lmdeploy/serve/openai/api_server.py, `pooling`): `data` is the reward itself."""
    if shape not in POOLING_SHAPES:
        raise BadRequest(f"pooling_shape={shape!r}; choose one of {POOLING_SHAPES}")
    tokens = sum(result["tokens"])
    data = [{"index": i, "object": "pooling", "data": [[score]] if shape == "vllm" else score}
            for i, score in enumerate(result["scores"])]
    return {"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            "normalized": result["normalized"], "truncated": result["truncated"]}


class SlimeRewardRequest(BaseModel):
    """One sample as slime's `remote_rm` posts it (THUDM/slime, slime/rollout/rm_hub/__init__.py): `prompt`
    (a string, or chat messages when the dataset applies no template), `response`, and `label`, which a
    learned RM ignores. slime returns `await resp.json()` as the reward, so the answer is a bare number."""

    prompt: Text
    response: Text
    label: Optional[Any] = None
