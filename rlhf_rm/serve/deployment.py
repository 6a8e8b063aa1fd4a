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
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import PurePath

import ray
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from rlhf_rm.checkpoint.scorer import RewardScorer
from rlhf_rm.serve import stages
from rlhf_rm.serve.config import LiveSettings, ReplicaSettings
from rlhf_rm.serve.protocol import (BadRequest, ClassifyRequest, EmbeddingsRequest, GetRewardRequest, PoolOverloaded,
                                    ScoreGroupRequest, ScoreRequest, check_pairs, classify_response,
                                    embeddings_response, group_advantages, plain, sglang_classify_response,
                                    split_queries, text_chars)
from rlhf_rm.checkpoint.storage import materialize
from rlhf_rm.serve.protocol import PoolingRequest, SlimeRewardRequest, pooling_response

logger = logging.getLogger("ray.serve")
# The schema and docs are served by routes of our own below, behind the token like everything but /health.
http_app = FastAPI(title="rlhf_rm reward pool", docs_url=None, redoc_url=None, openapi_url=None)


@http_app.exception_handler(BadRequest)
async def _bad_request(request: Request, error: BadRequest):
    return JSONResponse({"detail": str(error)}, status_code=413 if error.too_large else 400)


@http_app.exception_handler(PoolOverloaded)
async def _overloaded(request: Request, error: PoolOverloaded):
    return JSONResponse({"detail": str(error)}, status_code=503,
                        headers={"Retry-After": str(math.ceil(error.retry_after_s))})


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
    def name(path):  # a URI's query (endpoint, ...) is left out too
        return None if path is None else PurePath(str(path).split("?")[0]).name

    live = {**info["live_settings"], "checkpoint": name(info["live_settings"]["checkpoint"]),
            "fallback_checkpoint": name(info["live_settings"]["fallback_checkpoint"])}
    model = name(info["model"]) if str(info["model"]).startswith(("/", "~", ".")) else info["model"]
    refused = info["refused_reload"] and "a checkpoint failed its parity certificate (details need a token)"
    return {**info, "model": model, "checkpoint": name(info["checkpoint"]),
            "local_checkpoint": name(info["local_checkpoint"]), "live_settings": live,
            "refused_reload": refused}


class _ForwardQueue:
    """Runs forwards one at a time on one thread; each takes every request that queued meanwhile (up to a cap).

    The replica's only batching layer: a request's texts go straight in (a `@serve.batch` in front cost a
    queue, a task and a future per text on every call, to merge what this queue merges anyway). An idle
    replica starts a lone request's forward at once; while a forward runs, what arrives joins the next one.

    Admission control: the queue knows its throughput (an EWMA of characters of text per second of forward
    thread, tokenizing included; characters are known before tokenizing) and refuses a request that would wait
    longer than `max_queue_s` behind the work queued before it (`PoolOverloaded`: 503 + Retry-After). A request
    whose caller is gone (its task cancelled: Serve does that when an HTTP client disconnects, a handle call is
    cancelled or the proxy's request_timeout_s passes) leaves the queue and is never tokenized or forwarded.
    """

    def __init__(self, executor: ThreadPoolExecutor):
        self.executor = executor
        self.waiting: list = []  # [items, future, chars] per request
        self.worker: asyncio.Task | None = None
        self.max_texts = 256  # live max_batch_size
        self.wait_s = 0.0  # live batch_wait_timeout_s: how long a forward waits for company before it starts
        self.max_queue_s = 4.0  # live max_queue_s
        self.max_group_tokens: int | None = None
        self.chars_per_s: float | None = None  # measured at load (warm_up) and after every forward
        self.queued_chars = 0
        self.running = (0, 0.0)  # characters in the forward running now, and when it started
        # Counters for /info: the mean batch size shows whether batching happens; dropped/refused the shedding.
        self.batches = self.texts = self.dropped = self.refused = 0

    def expected_wait_s(self) -> float:
        """Seconds until the work queued now (and what is left of the running forward) is done."""
        if not self.chars_per_s:
            return 0.0
        running_chars, since = self.running
        left = max(running_chars - (time.perf_counter() - since) * self.chars_per_s, 0.0)
        return (self.queued_chars + left) / self.chars_per_s

    def admit(self) -> None:
        """Raise PoolOverloaded when a request would wait longer than max_queue_s before its forward starts
        (its own forward is bounded by the request limits, so a big request is not starved by small ones)."""
        if not self.chars_per_s or not (self.waiting or self.running[0]):
            return
        wait = self.expected_wait_s()
        if wait > self.max_queue_s:
            self.refused += 1
            raise PoolOverloaded(wait, self.max_queue_s, retry_after_s=max(1, math.ceil(wait)))

    def measured(self, chars: int, seconds: float) -> None:
        if chars and seconds > 0:
            rate = chars / seconds
            self.chars_per_s = rate if self.chars_per_s is None else 0.7 * self.chars_per_s + 0.3 * rate

    async def run(self, items: list, chars: int) -> tuple[list, tuple]:
        """(one result per item, the forward thread's (start, tokenized, done) times)."""
        self.admit()
        entry = [items, asyncio.get_running_loop().create_future(), chars]
        self.waiting.append(entry)
        self.queued_chars += chars
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        try:
            return await entry[1]
        finally:
            if any(waiting is entry for waiting in self.waiting):  # cancelled while queued: drop it
                self.waiting = [waiting for waiting in self.waiting if waiting is not entry]
                self._dropped(entry)

    def _dropped(self, entry: list) -> None:
        self.queued_chars -= entry[2]
        self.dropped += len(entry[0])

    def _take(self) -> list:
        """The next forward's requests, skipping those whose caller is gone."""
        taken, texts = [], 0
        while self.waiting and (not taken or texts + len(self.waiting[0][0]) <= self.max_texts):
            entry = self.waiting.pop(0)
            if entry[1].done():  # cancelled before its task ran the cleanup in `run`
                self._dropped(entry)
                continue
            self.queued_chars -= entry[2]
            taken.append(entry)
            texts += len(entry[0])
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            if self.wait_s and sum(len(entry[0]) for entry in self.waiting) < self.max_texts:
                await asyncio.sleep(self.wait_s)
            taken = self._take()
            if not taken:
                continue
            merged = [item for items, _, _ in taken for item in items]
            self.batches += 1
            self.texts += len(merged)
            self.running = (sum(entry[2] for entry in taken), time.perf_counter())
            try:
                results, times = await loop.run_in_executor(self.executor, _score_items, merged,
                                                            self.max_group_tokens)
            except Exception as error:  # noqa: BLE001 - handed to every waiting caller
                for _, future, _ in taken:
                    if not future.done():  # a caller may have gone away meanwhile
                        future.set_exception(error)
                continue
            finally:
                self.running = (0, 0.0)
            start, forwarded = 0, 0
            for items, future, chars in taken:
                mine = results[start:start + len(items)]
                if not future.done():
                    future.set_result((mine, times))
                if not all(isinstance(result, Exception) for result in mine):
                    forwarded += chars  # refused items (413, empty text) cost a tokenization, not a forward
                start += len(items)
            self.measured(forwarded, times[2] - times[0])


def _request_problem(group, max_group_tokens: int | None) -> BadRequest | None:
    """Why an encoded item must not be forwarded: a text of zero tokens (it would fail its whole forward), or a
    group over the token cap. Named by response position; the route adds the request's text index."""
    for position, ids in enumerate(group.response_ids):
        if not group.prompt_ids and not ids:
            return BadRequest(f"responses[{position}] renders to zero tokens (an empty text); send text to score")
    if max_group_tokens is not None and len(group.response_ids) > 1 and group.shared_length() > max_group_tokens:
        return BadRequest(f"the group has {group.shared_length():,} tokens, over the limit max_group_tokens="
                          f"{max_group_tokens:,}; send fewer or shorter responses", too_large=True)
    return None


def _score_items(items: list[tuple[RewardScorer, object, list]],
                 max_group_tokens: int | None = None) -> tuple[list[tuple], tuple]:
    """Tokenize and forward a merged batch of (scorer, prompt, responses) items — one response for a text,
    n for a group scored with its prompt computed once; items of different scorers (mid-reload) go to their
    own model. Each item gets (scores, spreads, truncated, tokens), or the exception that encoding it raised
    (or the `BadRequest` that refuses it: `_request_problem`); spreads are the std across ensemble heads, None
    for one head. Also returns when the thread started, finished tokenizing and finished the forward
    (perf_counter, for the stage timings)."""
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
                group = scorer.encoder.encode_group(items[index][1], items[index][2])
            except Exception as error:  # noqa: BLE001 - e.g. a chat template refusing the messages:
                results[index] = error  # that caller gets a 400, its batch mates are still scored
                continue
            results[index] = _request_problem(group, max_group_tokens)
            if results[index] is None:
                encoded[index] = group
        tokenizing += time.perf_counter() - tokenize_start
        if not encoded:
            continue
        values, spreads = scorer.score_groups_with_spread(list(encoded.values()))
        for position, (index, group) in enumerate(encoded.items()):
            results[index] = (values[position], None if spreads is None else spreads[position],
                              group.prompt_truncated or group.response_truncated, group.shared_length())
    return results, (started, started + tokenizing, time.perf_counter())


def _refuse_uncertified(scorer: RewardScorer, allowed: bool) -> None:
    """Serving refuses a checkpoint without a parity certificate (nothing proves it scores as trained),
    at start and on every reload, unless the serve setting allow_uncertified=true says otherwise."""
    if scorer.certified:
        return
    if not allowed:
        from rlhf_rm.checkpoint.certificate import CERTIFICATE_FILE, CertificateError

        raise CertificateError(f"checkpoint {scorer.checkpoint} has no {CERTIFICATE_FILE}, so nothing shows it "
                               f"scores as trained; serving refuses it (serve setting allow_uncertified=true "
                               f"serves it anyway)")
    logger.warning("serving UNCERTIFIED checkpoint %s (allow_uncertified=true)", scorer.checkpoint)


def _warm_up(scorer: RewardScorer, queue: _ForwardQueue) -> None:
    """One forward of a few texts, timed: the throughput admission control starts from (the first forward of
    a process is its slowest, so the start is cautious; every forward then updates it)."""
    texts = ["The quick brown fox jumps over the lazy dog. " * 20] * 8
    started = time.perf_counter()
    scorer.score_groups_with_spread([scorer.encoder.encode_group("", [text]) for text in texts])
    queue.measured(sum(len(text) for text in texts), time.perf_counter() - started)


@serve.deployment
@serve.ingress(http_app)
class ScoringDeployment:
    def __init__(self, settings: ReplicaSettings):
        import torch

        torch.set_num_threads(settings.torch_threads)
        self.replica = settings
        self.max_texts = settings.max_texts_per_request
        self.max_text_chars = settings.max_text_chars
        self.token_sha256 = settings.token_sha256
        self.device, self.dtype = settings.device, settings.dtype
        self.refused_reload: str | None = None  # why the last hot reload was refused (certificate), for /info
        http_app.state.max_body_bytes = settings.max_body_bytes
        http_app.state.token_sha256 = settings.token_sha256
        self.scorer: RewardScorer | None = None
        self.serving: str | None = None  # the checkpoint as given (a URI stays a URI; scorer has the local copy)
        self.settings: LiveSettings | None = None
        # One forward thread: the event loop keeps queueing requests while a forward runs.
        self._forward_queue = _ForwardQueue(ThreadPoolExecutor(1, thread_name_prefix="rm-forward"))
        self._forward_queue.max_group_tokens = settings.max_group_tokens
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
        self._forward_queue.max_queue_s = settings.max_queue_s
        self.settings = settings

    async def _load_checkpoint(self, settings: LiveSettings) -> LiveSettings:
        """Load `settings.checkpoint` (the load re-scores its parity canaries and raises on a mismatch).
        A checkpoint that fails is refused: the replica keeps the model it serves, or — a replica started
        by the reload itself — loads the pool's previous checkpoint (`fallback_checkpoint`, set by
        `app.start`), so a bad reload never fails a request."""
        loop = asyncio.get_running_loop()

        def load(checkpoint: str) -> RewardScorer:
            # A URI is downloaded into this node's cache (once per node), then loaded like a directory:
            # the load re-scores the parity canaries of what was downloaded.
            scorer = RewardScorer(materialize(checkpoint), tokens_per_batch=settings.tokens_per_forward,
                                  device=self.device, dtype=self.dtype)
            _refuse_uncertified(scorer, self.replica.allow_uncertified)
            _warm_up(scorer, self._forward_queue)
            return scorer

        try:
            self.scorer = await loop.run_in_executor(None, load, settings.checkpoint)
            self.serving = settings.checkpoint
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
            self.serving = fallback
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
        chars = sum(text_chars(p) + text_chars(r) for p, r in zip(prompts, responses))
        results, times = await self._forward_queue.run([(scorer, p, [r]) for p, r in zip(prompts, responses)],
                                                       chars) if responses else ([], None)
        for index, result in enumerate(results):
            if isinstance(result, BadRequest):
                raise BadRequest(f"text {index}: {str(result).replace('responses[0] ', '')}", result.too_large)
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
        """n responses to one prompt, scored prefix-shared (the prompt computed once per forward of
        `tokens_per_forward` tokens; a group over `max_group_tokens` is a 413); equal to scoring each full text
        alone. `advantages`: None, "grpo" or "rloo" (group-normalized)."""
        check_pairs([prompt] * len(responses) if isinstance(responses, list) else None, responses, self.max_texts,
                    self.max_text_chars)
        if not responses:
            return {"scores": [], "spreads": None, "advantages": [] if advantages else None,
                    "normalized": bool(normalize), "truncated": False, "tokens": 0}
        group_advantages([0.0, 1.0], advantages)  # an unknown kind is a 400 before any compute
        scorer = self.scorer
        normalize = self.settings.normalize if normalize is None else normalize
        entered = time.perf_counter()
        chars = text_chars(prompt) + sum(text_chars(r) for r in responses)
        results, times = await self._forward_queue.run([(scorer, prompt, list(responses))], chars)
        result = results[0]
        if isinstance(result, BadRequest):
            raise result
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
        mean, std = scorer.metadata.reward_mean, scorer.metadata.reward_std
        if mean is None or not std:
            raise BadRequest(f"checkpoint {scorer.checkpoint} stores no reward_mean/reward_std to normalize with")
        return [(s - mean) / std for s in scores], None if spreads is None else [s / std for s in spreads]

    def info(self) -> dict:
        metadata = self.scorer.metadata
        return {"model": metadata.base_model or self.scorer.checkpoint,
                "checkpoint": self.serving,
                "local_checkpoint": self.scorer.checkpoint,  # where a URI was downloaded on this replica's node
                "max_length": self.scorer.spec.max_length,
                "rendering": self.scorer.spec.to_dict(),
                "certified": self.scorer.certified,
                "allow_uncertified": self.replica.allow_uncertified,
                "length_head": metadata.length_head,  # trained with ODIN's length head (score = quality head)
                "dtype": self.dtype,
                "refused_reload": self.refused_reload,
                "normalization": {"default": self.settings.normalize, "reward_mean": metadata.reward_mean,
                                  "reward_std": metadata.reward_std},
                "live_settings": asdict(self.settings),
                "max_texts_per_request": self.max_texts,
                "max_text_chars": self.max_text_chars,
                "max_group_tokens": self.replica.max_group_tokens,
                "replica": serve.get_replica_context().replica_id.unique_id,
                "ingress": _ingress(),
                "node": ray.get_runtime_context().get_node_id(),  # the Ray node this replica runs on
                "pid": os.getpid(),  # for memory sampling (serve_bench --soak) and tests that kill a replica
                "batches": {"count": self._forward_queue.batches, "texts": self._forward_queue.texts},
                "admission": self._admission()}

    def _admission(self) -> dict:
        """Admission control's state: measured throughput, queued seconds, texts dropped (caller gone) and
        requests refused (over max_queue_s)."""
        queue = self._forward_queue
        return {"chars_per_s": None if queue.chars_per_s is None else round(queue.chars_per_s, 1),
                "queued_s": round(queue.expected_wait_s(), 3), "max_queue_s": queue.max_queue_s,
                "dropped_texts": queue.dropped, "refused_requests": queue.refused}

    def redeploy_state(self) -> dict:
        """What a redeploy must carry over (app.start reads it through the handle, never over HTTP): the
        checkpoint served now, and the token digest, so a redeploy without the token keeps auth on."""
        return {"checkpoint": self.serving, "token_sha256": self.token_sha256,
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
