"""RewardClient waits what the pool's Retry-After asks (issue 17, item 4: a 503 + Retry-After is how the pool
answers a request lost to a dead replica). The server here is a plain loopback HTTP server that answers the
way the pool's proxy middleware does; the client under test is the real one."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_rm.serve.client import RewardClient, RewardServiceError


class _Pool:
    """Answers the first `refusals` POSTs with `status` + Retry-After, then scores; records arrival times."""

    def __init__(self, status: int, retry_after: str, refusals: int = 1):
        self.status, self.retry_after, self.refusals = status, retry_after, refusals
        self.arrivals: list[float] = []
        pool = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pool.arrivals.append(time.monotonic())
                if len(pool.arrivals) <= pool.refusals:
                    payload, code, headers = b'{"detail": "replica restarting"}', pool.status, {
                        "Retry-After": pool.retry_after}
                else:
                    payload = json.dumps({"scores": [0.25] * len(body["responses"])}).encode()
                    code, headers = 200, {}
                self.send_response(code)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gap_s(self) -> float:
        return self.arrivals[1] - self.arrivals[0]


@pytest.fixture
def pools():
    made = []
    yield lambda *args, **kwargs: made.append(_Pool(*args, **kwargs)) or made[-1]
    for pool in made:
        pool.server.shutdown()


@pytest.mark.parametrize("status", [503, 429])
def test_client_waits_the_retry_after_seconds_of_a_503_or_429(pools, status):
    pool = pools(status, "1")
    client = RewardClient(url=pool.url, backoff_s=0.01, retries=2)
    assert client.score(["p"], ["r"]) == [0.25]
    assert len(pool.arrivals) == 2
    assert pool.gap_s() >= 0.95, f"retried after {pool.gap_s():.3f} s, Retry-After asked 1 s"


def test_async_client_and_http_date_form_of_retry_after(pools):
    pool = pools(503, formatdate(time.time() + 2, usegmt=True))  # an HTTP date, 1-2 s ahead (whole seconds)
    client = RewardClient(url=pool.url, backoff_s=0.01, retries=2)
    assert asyncio.run(client.ascore(["p", "q"], ["r", "s"])) == [0.25, 0.25]
    assert pool.gap_s() >= 0.9


def test_client_without_retry_after_backs_off_and_gives_up_after_its_retries(pools):
    pool = pools(503, "", refusals=10)
    client = RewardClient(url=pool.url, backoff_s=0.01, retries=2)
    with pytest.raises(RewardServiceError, match="503"):
        client.score(["p"], ["r"])
    assert len(pool.arrivals) == 3
    assert pool.gap_s() < 0.9  # its own backoff, not a second


@pytest.mark.parametrize("header", ["nan", "-1", "soon"])
def test_an_unreadable_retry_after_falls_back_to_backoff(pools, header):
    pool = pools(503, header)
    client = RewardClient(url=pool.url, backoff_s=0.01, retries=2)
    assert client.score(["p"], ["r"]) == [0.25]
    assert pool.gap_s() < 0.9
