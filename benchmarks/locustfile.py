"""Locust users that behave like a rollout fleet against the pool; run by benchmarks/load_bench.py.

Each user posts 16 HH-style texts to `/get_reward` (OpenRLHF's remote-RM body) with the 30 s timeout
slime's and POLAR's clients use, and after a 503 waits what its `Retry-After` asks before the next call (a
refused batch is simply sent again). With LOAD_BENCH_PACE_S = 0 a user calls again at once (a closed loop:
the capacity search); with a pace it is a rollout worker that generates for that long between reward calls:
one call per pace, started at a random offset, or at once when its answer took longer than the pace. Every call is also written to a JSON Lines file of its
own (start, end, outcome, status, Retry-After), so the bench can split admitted calls from shed ones, which
Locust's own statistics mix. Settings come from the environment (load_bench.py sets them):

    LOAD_BENCH_TEXTS      JSON file: a list of texts; each call takes LOAD_BENCH_TEXTS_PER_CALL of them
    LOAD_BENCH_OUT        where to write the per-call records (JSON Lines)
    LOAD_BENCH_TIMEOUT_S  the client timeout (default 30)
    LOAD_BENCH_PACE_S     seconds between a user's call starts (default 0: none)
"""

from __future__ import annotations

import json
import os
import random
import time

import gevent
import requests
from locust import HttpUser, constant, events, task

TEXTS = json.loads(open(os.environ["LOAD_BENCH_TEXTS"]).read())
PER_CALL = int(os.environ.get("LOAD_BENCH_TEXTS_PER_CALL", "16"))
TIMEOUT_S = float(os.environ.get("LOAD_BENCH_TIMEOUT_S", "30"))
PACE_S = float(os.environ.get("LOAD_BENCH_PACE_S", "0"))
SEED = int(os.environ.get("LOAD_BENCH_SEED", "0"))
RECORDS: list[dict] = []
_users_started = 0


def outcome_of(status: int | None, error: BaseException | None) -> str:
    """ok (2xx) | shed (503) | timeout (no answer within the client timeout) | dropped (the connection
    failed or was cut) | other (any other status)."""
    if error is not None:
        if isinstance(error, requests.exceptions.Timeout):
            return "timeout"
        return "dropped"
    if 200 <= status < 300:
        return "ok"
    return "shed" if status == 503 else "other"


class RolloutCaller(HttpUser):
    wait_time = constant(0)

    def on_start(self):
        global _users_started
        self.rng = random.Random(SEED * 100_003 + _users_started)  # user i draws the same texts on every run
        _users_started += 1
        if PACE_S:
            gevent.sleep(self.rng.uniform(0, PACE_S))  # workers are not in step with each other

    @task
    def get_reward(self):
        start = self.rng.randrange(len(TEXTS))
        query = [TEXTS[(start + k) % len(TEXTS)] for k in range(PER_CALL)]
        began = time.time()
        status, error, retry_after = None, None, None
        with self.client.post("/get_reward", json={"query": query}, timeout=TIMEOUT_S, name="/get_reward",
                              catch_response=True) as response:
            status = response.status_code or None
            error = response.error if status is None else None
            if status is None:
                response.failure(f"no answer: {type(error).__name__}")
            elif status == 503:
                retry_after = response.headers.get("Retry-After")
                response.failure("503 shed")
            elif not 200 <= status < 300:
                response.failure(f"HTTP {status}")
            elif status is not None and 200 <= status < 300 and len(response.json()["rewards"]) != PER_CALL:
                response.failure("wrong number of rewards")
        ended = time.time()
        RECORDS.append({"start": began, "end": ended, "outcome": outcome_of(status, error), "status": status,
                        "retry_after": retry_after, "texts": PER_CALL,
                        "error": None if error is None else type(error).__name__})
        wait = max(0.0, PACE_S - (ended - began))
        if retry_after is not None:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:  # an HTTP date: not sent by the pool; wait a second
                wait = max(wait, 1.0)
        gevent.sleep(wait)


@events.quitting.add_listener
def write_records(environment, **kwargs):
    with open(os.environ["LOAD_BENCH_OUT"], "w") as out:
        for record in RECORDS:
            out.write(json.dumps(record) + "\n")
