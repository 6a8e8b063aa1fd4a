"""The pool's replica: a `RewardScorer` behind one forward queue, with HTTP routes and in-place model reloads.

Every text of every request is one item of `_ForwardQueue`, which runs one forward at a time and merges
everything that queued during it into the next: batches grow with load, and an idle replica answers a lone
request at once (`batch_wait_timeout_s`, default 0, can make a forward wait for company). A batch is sorted
by length and cut into forwards of `tokens_per_forward` padded tokens; padding is masked and positions start
at 0, so a text's score does not depend on its batch mates.

Texts are tokenized on the forward thread, just before their forward: a request crosses one thread
boundary each way (event loop -> forward thread -> event loop), and the fast tokenizer, which is not safe
to call from two threads at once, only ever runs on that one thread.
"""

# No `from __future__ import annotations`: FastAPI must see the body models as real classes
# through Serve's ingress wrapper, not as strings.
import asyncio
import collections
import dataclasses
import hashlib
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import PurePath

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from rlhf_rm.scoring import RewardScorer
from rlhf_rm.serve import stages
from rlhf_rm.serve.config import LiveSettings
from rlhf_rm.serve.protocol import (BadRequest, ClassifyRequest, EmbeddingsRequest, GetRewardRequest,
                                    ScoreGroupRequest, ScoreRequest, check_pairs, classify_response,
                                    embeddings_response, group_advantages, plain, sglang_classify_response,
                                    split_queries)
from rlhf_rm.serve.protocol import PoolingRequest, SlimeRewardRequest, pooling_response

logger = logging.getLogger("ray.serve")
# The schema and docs are served by routes of our own below, behind the token like everything but /health.
http_app = FastAPI(title="rlhf_rm reward pool", docs_url=None, redoc_url=None, openapi_url=None)


@http_app.exception_handler(BadRequest)
async def _bad_request(request: Request, error: BadRequest):
    return JSONResponse({"detail": str(error)}, status_code=413 if error.too_large else 400)


@http_app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, error: RequestValidationError):
    # FastAPI's default echoes the offending input back; we name the field and the problem only.
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
    return JSONResponse({"detail": problems}, status_code=422)


class _BodyLimit:
    """Refuses a POST without Content-Length (411) or over the limit (413) before its body is read, so a 10 MB
    upload costs the replica nothing; notes when the request entered the replica (stage timings). Plain ASGI:
    Starlette's BaseHTTPMiddleware costs a task and a memory stream per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            stages.HTTP_ENTRY.set(time.perf_counter())
            if scope["method"] == "POST":
                refusal = _body_refusal(dict(scope["headers"]).get(b"content-length"), scope["app"].state.max_body_bytes)
                if refusal is not None:
                    return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


def _body_refusal(length: bytes | None, limit: int) -> JSONResponse | None:
    if length is None:
        return JSONResponse({"detail": "send a Content-Length header"}, status_code=411)
    if int(length) > limit:
        return JSONResponse({"detail": f"body of {length.decode()} bytes exceeds the limit of {limit}"}, status_code=413)
    return None


http_app.add_middleware(_BodyLimit)


def _require_token(request: Request) -> None:
    expected = request.app.state.token_sha256
    if expected is None:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    digest = hashlib.sha256(presented.encode()).hexdigest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(digest, expected):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _ingress() -> str:
    """How HTTP reaches this replica: Serve's Python proxy, or HAProxy (the controller's env, inherited)."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy"


def _without_paths(info: dict) -> dict:
    """/info for callers nobody authenticated (a pool without a token): checkpoints by name, not by where
    they sit on the replica's disk."""
    def name(path):
        return None if path is None else PurePath(path).name

    live = {**info["live_settings"], "checkpoint": name(info["live_settings"]["checkpoint"]),
            "fallback_checkpoint": name(info["live_settings"]["fallback_checkpoint"])}
    model = name(info["model"]) if str(info["model"]).startswith(("/", "~", ".")) else info["model"]
    refused = info["refused_reload"] and "a checkpoint failed its parity certificate (details need a token)"
    return {**info, "model": model, "checkpoint": name(info["checkpoint"]), "live_settings": live,
            "refused_reload": refused}


class _ForwardQueue:
    """Runs forwards one at a time on one thread; each takes every request that queued meanwhile (up to a cap).

    The replica's only batching layer: a request's texts go straight in (a `@serve.batch` in front cost a
    queue, a task and a future per text on every call, to merge what this queue merges anyway). An idle
    replica starts a lone request's forward at once; while a forward runs, what arrives joins the next one.
    """

    def __init__(self, executor: ThreadPoolExecutor):
        self.executor = executor
        self.waiting: list = []  # (items, future) per request
        self.worker: asyncio.Task | None = None
        self.max_texts = 256  # live max_batch_size
        self.wait_s = 0.0  # live batch_wait_timeout_s: how long a forward waits for company before it starts
        self.batches = 0  # counters for /info: the mean batch size shows whether batching happens
        self.texts = 0

    async def run(self, items: list) -> tuple[list, tuple]:
        """(one result per item, the forward thread's (start, tokenized, done) times)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((items, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            if self.wait_s and sum(len(items) for items, _ in self.waiting) < self.max_texts:
                await asyncio.sleep(self.wait_s)
            taken, texts = [], 0
            while self.waiting and (not taken or texts + len(self.waiting[0][0]) <= self.max_texts):
                taken.append(self.waiting.pop(0))
                texts += len(taken[-1][0])
            merged = [item for items, _ in taken for item in items]
            self.batches += 1
            self.texts += len(merged)
            try:
                results, times = await loop.run_in_executor(self.executor, _score_items, merged)
            except Exception as error:  # noqa: BLE001 - handed to every waiting caller
                for _, future in taken:
                    if not future.done():  # a caller may have gone away meanwhile
                        future.set_exception(error)
                continue
            start = 0
            for items, future in taken:
                if not future.done():
                    future.set_result((results[start:start + len(items)], times))
                start += len(items)


def _score_items(items: list[tuple[RewardScorer, object, list]]) -> tuple[list[tuple], tuple]:
    """Tokenize and forward a merged batch of (scorer, prompt, responses) items — one response for a text,
    n for a group scored with its prompt computed once; items of different scorers (mid-reload) go to their
    own model. Each item gets (scores, spreads, truncated, tokens), or the exception that encoding it raised;
    spreads are the std across ensemble heads, None for one head. Also returns when the thread started,
    finished tokenizing and finished the forward (perf_counter, for the stage timings)."""
    started = time.perf_counter()
    tokenizing = 0.0
    results: list = [()] * len(items)
    by_scorer: dict[int, list[int]] = {}
    for index, (scorer, _, _) in enumerate(items):
        by_scorer.setdefault(id(scorer), []).append(index)
    for indices in by_scorer.values():
        scorer = items[indices[0]][0]
        encoded = {}
        tokenize_start = time.perf_counter()
        for index in indices:
            try:
                encoded[index] = scorer.encoder.encode_group(items[index][1], items[index][2])
            except Exception as error:  # noqa: BLE001 - e.g. a chat template refusing the messages:
                results[index] = error  # that caller gets a 400, its batch mates are still scored
        tokenizing += time.perf_counter() - tokenize_start
        values, spreads = scorer.score_groups_with_spread(list(encoded.values()))
        for position, (index, group) in enumerate(encoded.items()):
            results[index] = (values[position], None if spreads is None else spreads[position],
                              group.prompt_truncated or group.response_truncated, group.shared_length())
    return results, (started, started + tokenizing, time.perf_counter())


@serve.deployment
@serve.ingress(http_app)
class ScoringDeployment:
    def __init__(self, max_texts_per_request: int = 4096, max_body_bytes: int = 8 * 1024 * 1024,
                 token_sha256: str | None = None, torch_threads: int = 1, device: str = "cpu",
                 dtype: str = "float32", max_text_chars: int | None = None):
        import torch

        torch.set_num_threads(torch_threads)
        self.max_texts = max_texts_per_request
        self.max_text_chars = max_text_chars
        self.token_sha256 = token_sha256
        self.device, self.dtype = device, dtype
        self.refused_reload: str | None = None  # why the last hot reload was refused (certificate), for /info
        http_app.state.max_body_bytes = max_body_bytes
        http_app.state.token_sha256 = token_sha256
        self.scorer: RewardScorer | None = None
        self.settings: LiveSettings | None = None
        # One forward thread: the event loop keeps queueing requests while a forward runs.
        self._forward_queue = _ForwardQueue(ThreadPoolExecutor(1, thread_name_prefix="rm-forward"))
        self._stages: collections.deque = collections.deque(maxlen=4096)  # see recent_stages

    # -- live settings ------------------------------------------------------------------------
    async def reconfigure(self, user_config: dict) -> None:
        """Called by Serve at start and on every user_config change: load a new checkpoint beside the
        old one, then swap. Requests already received finish on the model that was live when they arrived."""
        settings = LiveSettings.from_dict(user_config)
        old = self.settings
        if old is None or settings.checkpoint != old.checkpoint:
            settings = await self._load_checkpoint(settings)
        self.scorer.tokens_per_batch = settings.tokens_per_forward
        self._forward_queue.max_texts = settings.max_batch_size
        self._forward_queue.wait_s = settings.batch_wait_timeout_s
        self.settings = settings

    async def _load_checkpoint(self, settings: LiveSettings) -> LiveSettings:
        """Load `settings.checkpoint` (the load re-scores its parity canaries and raises on a mismatch).
        A checkpoint that fails is refused: the replica keeps the model it serves, or — a replica started
        by the reload itself — loads the pool's previous checkpoint (`fallback_checkpoint`, set by
        `app.start`), so a bad reload never fails a request."""
        loop = asyncio.get_running_loop()

        def load(checkpoint: str) -> RewardScorer:
            return RewardScorer(checkpoint, tokens_per_batch=settings.tokens_per_forward, device=self.device,
                                dtype=self.dtype)

        try:
            self.scorer = await loop.run_in_executor(None, load, settings.checkpoint)
            self.refused_reload = None
            logger.info("serving checkpoint %s", settings.checkpoint)
            return settings
        except Exception as error:  # noqa: BLE001 - a refused reload keeps the model that works
            fallback = self.settings.checkpoint if self.scorer is not None else settings.fallback_checkpoint
            if not fallback or fallback == settings.checkpoint:
                raise  # nothing to fall back on: this replica must not start
            self.refused_reload = f"{settings.checkpoint}: {type(error).__name__}: {error}"
            logger.error("reload refused, serving %s instead: %s", fallback, self.refused_reload)
        if self.scorer is None:
            self.scorer = await loop.run_in_executor(None, load, fallback)
        return dataclasses.replace(settings, checkpoint=fallback)

    # -- scoring (handle API) -------------------------------------------------------------------
    async def score(self, prompts: list | None, responses: list, normalize: bool | None = None) -> dict:
        """Score (prompt, response) pairs. Returns scores, truncated flags, token counts and whether
        the scores were normalized. Raises `BadRequest` for malformed input."""
        entered = time.perf_counter()
        prompts = check_pairs(prompts, responses, self.max_texts, self.max_text_chars)
        scorer = self.scorer
        normalize = self.settings.normalize if normalize is None else normalize
        if normalize:
            self._normalized(scorer, [], None, True)  # a checkpoint without mean/std is a 400 before any compute
        results, times = await self._forward_queue.run([(scorer, p, [r]) for p, r in zip(prompts, responses)]) \
            if responses else ([], None)
        for index, result in enumerate(results):
            if isinstance(result, Exception):
                raise BadRequest(f"text {index} could not be encoded: {type(result).__name__}: {result}")
        scores = [result[0][0] for result in results]
        spreads = [result[1][0] for result in results] if scorer.ensemble_size > 1 else None
        scores, spreads = self._normalized(scorer, scores, spreads, normalize)
        self._record_stages(entered, times)
        return {"scores": scores, "spreads": spreads, "normalized": bool(normalize),
                "truncated": [result[2] for result in results], "tokens": [result[3] for result in results]}

    async def score_group(self, prompt, responses: list, normalize: bool | None = None,
                          advantages: str | None = None) -> dict:
        """n responses to one prompt, scored in one prefix-shared forward (the prompt computed once);
        equal to scoring each full text alone. `advantages`: None, "grpo" or "rloo" (group-normalized)."""
        check_pairs([prompt] * len(responses) if isinstance(responses, list) else None, responses, self.max_texts,
                    self.max_text_chars)
        if not responses:
            return {"scores": [], "spreads": None, "advantages": [] if advantages else None,
                    "normalized": bool(normalize), "truncated": False, "tokens": 0}
        group_advantages([0.0, 1.0], advantages)  # an unknown kind is a 400 before any compute
        scorer = self.scorer
        normalize = self.settings.normalize if normalize is None else normalize
        entered = time.perf_counter()
        results, times = await self._forward_queue.run([(scorer, prompt, list(responses))])
        result = results[0]
        if isinstance(result, Exception):
            raise BadRequest(f"the group could not be encoded: {type(result).__name__}: {result}")
        scores, spreads = self._normalized(scorer, result[0], result[1], normalize)
        self._record_stages(entered, times)
        return {"scores": scores, "spreads": spreads, "advantages": group_advantages(scores, advantages),
                "normalized": bool(normalize), "truncated": result[2], "tokens": result[3]}

    def _record_stages(self, entered: float, times: tuple | None) -> None:
        if times is not None:
            self._stages.append((stages.HTTP_ENTRY.get(), entered, *times, time.perf_counter()))

    def recent_stages(self, n: int = 1024) -> list[tuple]:
        """perf_counter times of the last n scoring calls, for serve_bench's per-stage table: (HTTP request
        entered the replica's ASGI app or None, handler entered, forward thread started, tokenized, forward
        done, handler returned). perf_counter is CLOCK_MONOTONIC, so a caller on this machine can line
        them up with its own send and receive times."""
        return list(self._stages)[-n:]

    def _normalized(self, scorer: RewardScorer, scores: list, spreads: list | None, normalize: bool):
        if not normalize:
            return scores, spreads
        mean, std = scorer.metadata.get("reward_mean"), scorer.metadata.get("reward_std")
        if mean is None or not std:
            raise BadRequest(f"checkpoint {scorer.checkpoint} stores no reward_mean/reward_std to normalize with")
        return [(s - mean) / std for s in scores], None if spreads is None else [s / std for s in spreads]

    def info(self) -> dict:
        metadata = self.scorer.metadata
        return {"model": metadata.get("base_model") or self.scorer.checkpoint,
                "checkpoint": self.scorer.checkpoint,
                "max_length": self.scorer.spec.max_length,
                "rendering": self.scorer.spec.to_dict(),
                "certified": self.scorer.certified,
                "length_head": metadata.get("length_head"),  # trained with ODIN's length head (score = quality head)
                "dtype": self.dtype,
                "refused_reload": self.refused_reload,
                "normalization": {"default": self.settings.normalize, "reward_mean": metadata.get("reward_mean"),
                                  "reward_std": metadata.get("reward_std")},
                "live_settings": asdict(self.settings),
                "max_texts_per_request": self.max_texts,
                "max_text_chars": self.max_text_chars,
                "replica": serve.get_replica_context().replica_id.unique_id,
                "ingress": _ingress(),
                "pid": os.getpid(),  # for memory sampling (serve_bench --soak) and tests that kill a replica
                "batches": {"count": self._forward_queue.batches, "texts": self._forward_queue.texts}}

    def redeploy_state(self) -> dict:
        """What a redeploy must carry over (app.start reads it through the handle, never over HTTP): the
        checkpoint served now, and the token digest, so a redeploy without the token keeps auth on."""
        return {"checkpoint": self.scorer.checkpoint if self.scorer else None, "token_sha256": self.token_sha256,
                "ingress": _ingress()}

    def check_health(self) -> None:
        if self.scorer is None:
            raise RuntimeError("no checkpoint loaded")

    # -- HTTP routes ----------------------------------------------------------------------------
    @http_app.get("/health")
    def health_route(self) -> dict:
        return {"status": "ok"}

    @http_app.get("/info", dependencies=[Depends(_require_token)])
    def info_route(self) -> dict:
        return self._http_info()

    def _http_info(self) -> dict:
        info = self.info()
        return info if self.token_sha256 else _without_paths(info)

    @http_app.get("/openapi.json", dependencies=[Depends(_require_token)], include_in_schema=False)
    def openapi_route(self) -> dict:
        return http_app.openapi()

    @http_app.get("/docs", dependencies=[Depends(_require_token)], include_in_schema=False)
    def docs_route(self, request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                                   title=http_app.title)

    @http_app.post("/score", dependencies=[Depends(_require_token)])
    async def score_route(self, body: ScoreRequest) -> dict:
        prompts = None if body.prompts is None else [plain(p) for p in body.prompts]
        return await self.score(prompts, [plain(r) for r in body.responses], body.normalize)

    @http_app.post("/get_reward", dependencies=[Depends(_require_token)])
    async def get_reward_route(self, body: GetRewardRequest) -> dict:
        prompts, responses = split_queries(body.query, body.prompts)
        result = await self.score(prompts, responses, body.normalize)
        return {"rewards": result["scores"], "scores": result["scores"], "truncated": result["truncated"],
                "normalized": result["normalized"]}

    @http_app.post("/classify", dependencies=[Depends(_require_token)])
    async def classify_route(self, body: ClassifyRequest):
        texts = body.texts()
        result = await self.score(texts, [""] * len(texts), body.normalize)
        if body.text is not None:  # SGLang's dialect
            return sglang_classify_response(result)
        return classify_response(result, body.model or self._http_info()["model"])

    @http_app.post("/v1/embeddings", dependencies=[Depends(_require_token)])
    async def embeddings_route(self, body: EmbeddingsRequest) -> dict:
        if body.encoding_format not in (None, "float"):
            raise BadRequest(f"encoding_format={body.encoding_format!r}: only 'float' is served")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        result = await self.score(texts, [""] * len(texts), body.normalize)
        return embeddings_response(result, body.model or self._http_info()["model"])

    @http_app.post("/score_group", dependencies=[Depends(_require_token)])
    async def score_group_route(self, body: ScoreGroupRequest) -> dict:
        return await self.score_group(plain(body.prompt), [plain(r) for r in body.responses], body.normalize,
                                      body.advantages)

    @http_app.post("/pooling", dependencies=[Depends(_require_token)])
    async def pooling_route(self, body: PoolingRequest) -> dict:
        """vLLM's or LMDeploy's /pooling (live setting `pooling_shape`), as InternLM POLAR reads it."""
        if body.encoding_format not in (None, "float"):
            raise BadRequest(f"encoding_format={body.encoding_format!r}: only 'float' is served")
        texts = body.texts()
        result = await self.score(texts, [""] * len(texts), body.normalize)
        return pooling_response(result, body.model or self._http_info()["model"], self.settings.pooling_shape)

    @http_app.post("/reward", dependencies=[Depends(_require_token)])
    async def slime_reward_route(self, body: SlimeRewardRequest) -> float:
        """slime's remote_rm: one sample in, the reward out as a bare JSON number."""
        result = await self.score([plain(body.prompt)], [plain(body.response)])
        return result["scores"][0]
