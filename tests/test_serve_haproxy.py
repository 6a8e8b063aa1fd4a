"""`ingress: haproxy` on real Ray Serve and a real HAProxy (the binary ray[serve] installs): exact scores and
auth through it, every socket it opens on loopback, and a replica SIGKILLed under load costing no request
and no bare 500. Helpers and fixtures come from test_serve.py (same tiny checkpoints, same app name)."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import httpx
import psutil
import pytest

from test_serve import (TOKEN_ENV, assert_scores, checkpoints, direct, expected,  # noqa: F401 - fixtures
                        free_port, kill_replicas_until_one_held_requests, running_pool, texts)

pytestmark = pytest.mark.slow  # every test here runs Ray (the fast tier leaves them out)


@pytest.fixture(scope="module")
def hpool(checkpoints):
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()  # ingress is fixed when Serve starts: an earlier module's Serve must go
    ports = {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    # RAY_SERVE_HAPROXY_* / RAY_SERVE_DIRECT_INGRESS_* set here are passed on to the Serve controller. Ray keeps a
    # replaced ingress replica 30 s so load balancers notice; the tests need not wait.
    env = {**ports, "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
    with running_pool(checkpoints, env=env, ingress="haproxy") as pool:
        yield pool, {k: int(v) for k, v in ports.items()}


def haproxy_listening() -> set[tuple[str, int]]:
    """(address, port) of every listening socket of the HAProxy processes."""
    found = set()
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "haproxy":
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                continue
    return found


def admin_sockets(pool_port: int) -> set[str]:
    """The admin socket paths of the HAProxy serving `pool_port` (read from the config it runs with)."""
    found = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        args = proc.info["cmdline"] or []
        if proc.info["name"] != "haproxy" or "-f" not in args:
            continue
        config = Path(args[args.index("-f") + 1]).read_text()
        if re.search(rf"^\s*bind \S+:{pool_port}\b", config, re.M):
            found |= set(re.findall(r"^\s*stats socket (\S+)", config, re.M))
    return found


def retries_so_far(stats_port: int) -> int:
    """HAProxy's own count of requests it sent again (retries + redispatches), from its stats page."""
    text = httpx.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=10).text.lstrip("# ")
    rows = list(csv.DictReader(io.StringIO(text)))
    return sum(int(row.get("wretr") or 0) + int(row.get("wredis") or 0) for row in rows if row["svname"] == "BACKEND")


def test_haproxy_ingress_scores_exactly_with_auth_and_listens_on_loopback_only(hpool, direct, texts):
    from rlhf_rm.serve import RewardClient

    pool, ports = hpool
    prompts, responses = texts
    with pool.http() as http:
        info = http.get("/info").json()
        assert info["ingress"] == "haproxy"
        assert_scores(http.post("/score", json={"prompts": prompts, "responses": responses}).json()["scores"],
                      expected(direct[0], prompts, responses))
        reward = http.post("/get_reward", json={"query": [p + r for p, r in zip(prompts[:3], responses[:3])]})
        assert reward.status_code == 200 and len(reward.json()["rewards"]) == 3
    with pool.http(token=None) as anonymous:
        assert anonymous.post("/score", json={"responses": ["x"]}).status_code == 401
        assert anonymous.get("/health").status_code == 200
    client = RewardClient(url=pool.url, token_env=TOKEN_ENV)
    assert_scores(client.score(prompts[:5], responses[:5]), expected(direct[0], prompts[:5], responses[:5]))

    listening = haproxy_listening()
    wanted = {pool.config.port, ports["RAY_SERVE_HAPROXY_STATS_PORT"], ports["RAY_SERVE_HAPROXY_METRICS_PORT"]}
    assert wanted <= {port for _, port in listening}, listening
    assert {address for address, _ in listening} == {"127.0.0.1"}, listening  # Ray's template: stats on *:PORT
    assert retries_so_far(ports["RAY_SERVE_HAPROXY_STATS_PORT"]) == 0
    [socket_path] = admin_sockets(pool.config.port)
    assert os.stat(socket_path).st_mode & 0o777 == 0o600  # Ray creates it 666: any local user could redirect traffic


def test_a_redeploy_asking_for_the_other_ingress_is_told_it_keeps_haproxy(hpool):
    import dataclasses

    from rlhf_rm.serve.app import start

    pool, _ = hpool
    with pytest.warns(UserWarning, match="runs with ingress=haproxy"):
        start(dataclasses.replace(pool.config, ingress="proxy"))  # e.g. a hot reload with the default config
    with pool.http() as http:
        assert http.get("/info").json()["ingress"] == "haproxy"


def test_sigkilled_replica_behind_haproxy_costs_no_request_and_no_500(hpool, direct, texts):
    """As test_serve's kill test, with HAProxy in front: a request whose replica died is sent again to the
    other one (HAProxy's stats count it), or answered 503 + Retry-After; never a bare 500 or a closed connection."""
    pool, ports = hpool
    stats_port = ports["RAY_SERVE_HAPROXY_STATS_PORT"]
    retried = [retries_so_far(stats_port)]

    def held(answers) -> bool:
        retried.append(retries_so_far(stats_port))
        return retried[-1] > retried[-2] or any(status == 503 for _, status, *_ in answers)

    kill_replicas_until_one_held_requests(pool, expected(direct[0], *texts), texts, held)
