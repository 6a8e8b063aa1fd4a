"""Runs inside Ray Serve's HTTP proxy: a request lost with its replica is retried on another one, and answered
503 with `Retry-After` (which every peer client retries) when that fails too, never with a bare 500.

When a replica dies mid-request (SIGKILL, OOM), Serve's proxy gets `ActorDiedError`, sends nothing, and uvicorn
answers 500. Scoring is idempotent, so the proxy may send the request again: the router has already dropped
the dead replica. Only this pool's routes are retried (the proxy serves every Serve app of the cluster), and
only requests whose body fits `MAX_REPLAY_BYTES` (a larger one is refused by the replica anyway).

Serve calls `proxy_middlewares()` in each proxy it starts when `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
names it; `app.start` sets that variable for the Serve controller it starts, whose proxies inherit it.
"""

from __future__ import annotations

import asyncio
import json

IMPORT_PATH = "rlhf_rm.serve.proxy_retry:proxy_middlewares"
ROUTES = ("/score", "/get_reward", "/classify", "/v1/embeddings", "/score_group", "/health", "/info")
RETRIES = 2
RETRY_DELAY_S = 0.05
RETRY_AFTER_S = 1
MAX_REPLAY_BYTES = 8 * 1024 * 1024  # the pool's default max_body_bytes


def proxy_middlewares() -> list:
    from starlette.middleware import Middleware

    return [Middleware(RetryLostRequests)]


class RetryLostRequests:
    """ASGI middleware around the proxy: a request that got no response at all is sent again (up to
    `RETRIES` times, on the pool's routes), then answered 503 + Retry-After; retried answers carry
    `x-rlhf-rm-retries`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = await _buffered_body(scope, receive) if _retryable(scope) else None
        attempts = 1 + (RETRIES if body is not None else 0)
        for attempt in range(attempts):
            started = False

            async def tracking_send(message, attempt=attempt):
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    if attempt:
                        message = {**message, "headers": [*message.get("headers", []),
                                                          (b"x-rlhf-rm-retries", str(attempt).encode())]}
                await send(message)

            try:
                await self.app(scope, receive if body is None else _replay(body, receive), tracking_send)
            except Exception:  # noqa: BLE001 - the proxy already logged it; the caller gets an answer below
                if started:
                    raise
            if started:
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(RETRY_DELAY_S)
        await _send_unavailable(send)


def _retryable(scope) -> bool:
    path = scope.get("path", "").rstrip("/")
    return scope["method"] in ("GET", "POST") and path.endswith(ROUTES)


async def _buffered_body(scope, receive) -> list | None:
    """The request's body messages, to replay on a retry; None when too large or the client went away."""
    length = dict(scope["headers"]).get(b"content-length")
    if length is None and scope["method"] == "POST":
        return None  # the replica answers 411
    if length is not None and (not length.isdigit() or int(length) > MAX_REPLAY_BYTES):
        return None
    messages = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        messages.append(message)
        if not message.get("more_body", False):
            return messages


def _replay(messages: list, receive):
    """A `receive` that hands out the buffered body, then waits on the client (for its disconnect)."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay


async def _send_unavailable(send) -> None:
    body = json.dumps({"detail": "the replica serving this request stopped; retry"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})
