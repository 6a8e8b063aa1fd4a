"""Runs inside Ray Serve's HTTP proxy: a request lost with its replica is retried on another one, and answered
503 with `Retry-After` (which every peer client retries) when that fails too, never with a bare 500.

When a replica dies mid-request (SIGKILL, OOM), Serve's proxy gets `ActorDiedError`, sends nothing, and uvicorn
answers 500. Scoring is idempotent, so the proxy may send the request again: the router has already dropped
the dead replica. Only this pool's routes are retried — its route prefix + the exact route paths (the proxy
serves every Serve app of the cluster) — only requests whose body fits the pool's `max_body_bytes` (a larger
one is refused by the replica anyway), and never a request whose client has disconnected (nobody waits for
it). A 503/429 that comes without `Retry-After` (Serve's "deployment unavailable") gets one.

Serve calls `proxy_middlewares()` in each proxy it starts when `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
names it; `app.start` sets that variable, and the pool's route prefix and body limit (`proxy_env`), for the
Serve controller it starts, whose proxies inherit them.
"""

from __future__ import annotations

import asyncio
import json
import os

from rlhf_rm.serve.config import BACKPRESSURE_RETRY_AFTER_S, ServeConfig

IMPORT_PATH = "rlhf_rm.serve.proxy_retry:proxy_middlewares"
ROUTES = ("/score", "/get_reward", "/classify", "/v1/embeddings", "/score_group", "/health", "/info")
RETRIES = 2
RETRY_DELAY_S = 0.05
RETRY_AFTER_S = BACKPRESSURE_RETRY_AFTER_S
MAX_REPLAY_BYTES = ServeConfig.max_body_bytes  # when the environment does not say (see proxy_env)
PREFIX_ENV, MAX_BYTES_ENV = "RLHF_RM_ROUTE_PREFIX", "RLHF_RM_MAX_BODY_BYTES"


def proxy_env(route_prefix: str, max_body_bytes: int) -> dict:
    """Environment for the Serve controller (its proxies inherit it): which routes are the pool's."""
    return {PREFIX_ENV: route_prefix, MAX_BYTES_ENV: str(max_body_bytes)}


def app_paths(route_prefix: str) -> frozenset:
    """The pool's exact paths under its route prefix ("/" or e.g. "/rm")."""
    prefix = route_prefix.rstrip("/")
    return frozenset(prefix + route for route in ROUTES)


def proxy_middlewares() -> list:
    from starlette.middleware import Middleware

    return [Middleware(RetryLostRequests)]


class RetryLostRequests:
    """ASGI middleware around the proxy: a request that got no response at all is sent again (up to
    `RETRIES` times, on the pool's routes), then answered 503 + Retry-After; retried answers carry
    `x-rlhf-rm-retries`."""

    def __init__(self, app, route_prefix: str | None = None, max_replay_bytes: int | None = None):
        self.app = app
        self.paths = app_paths(route_prefix or os.environ.get(PREFIX_ENV, "/"))
        self.max_replay_bytes = max_replay_bytes or int(os.environ.get(MAX_BYTES_ENV, MAX_REPLAY_BYTES))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = await _buffered_body(scope, receive, self.max_replay_bytes) if self._retryable(scope) else None
        attempts = 1 + (RETRIES if body is not None else 0)
        for attempt in range(attempts):
            started = False
            replay = _Replay(body, receive)

            async def tracking_send(message, attempt=attempt):
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    message = _with_headers(message, attempt)
                await send(message)

            try:
                await self.app(scope, receive if body is None else replay.receive, tracking_send)
            except Exception:  # noqa: BLE001 - the proxy already logged it; the caller gets an answer below
                if started:
                    raise
            if started or replay.disconnected:
                return  # answered, or nobody is waiting for an answer: never replay a gone client's request
            if attempt + 1 < attempts:
                await asyncio.sleep(RETRY_DELAY_S)
        await _send_unavailable(send)

    def _retryable(self, scope) -> bool:
        path = scope.get("path", "")
        path = path.rstrip("/") or path
        return scope["method"] in ("GET", "POST") and path in self.paths


def _with_headers(message: dict, attempt: int) -> dict:
    """x-rlhf-rm-retries on a retried answer; Retry-After on a 503/429 that has none."""
    headers = list(message.get("headers", []))
    if attempt:
        headers.append((b"x-rlhf-rm-retries", str(attempt).encode()))
    if message.get("status") in (429, 503) and not any(name.lower() == b"retry-after" for name, _ in headers):
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    return {**message, "headers": headers}


async def _buffered_body(scope, receive, max_bytes: int = MAX_REPLAY_BYTES) -> list | None:
    """The request's body messages, to replay on a retry; None when too large or the client went away."""
    length = dict(scope["headers"]).get(b"content-length")
    if length is None and scope["method"] == "POST":
        return None  # the replica answers 411
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        return None
    messages = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        messages.append(message)
        if not message.get("more_body", False):
            return messages


class _Replay:
    """A `receive` that hands out the buffered body, then waits on the client, noting its disconnect."""

    def __init__(self, messages: list | None, receive):
        self.pending = list(messages or ())
        self.client_receive = receive
        self.disconnected = False

    async def receive(self):
        if self.pending:
            return self.pending.pop(0)
        message = await self.client_receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message


async def _send_unavailable(send) -> None:
    body = json.dumps({"detail": "the replica serving this request stopped; retry"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})
