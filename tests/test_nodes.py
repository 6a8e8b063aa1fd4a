"""Losing a node: Ray's `ray.cluster_utils.Cluster` runs a head and worker nodes on this one machine (each node a
raylet of its own); a node is killed (its raylet and every worker on it, like a reclaimed spot instance) while it
holds a training worker or a serving replica, and a fresh node joins afterwards, as the autoscaler would add one.

Storage every node reaches is a local directory here (the nodes share this machine's disk); on a real cluster it
is a bucket URI (`trainer.storage_path=s3://...`, docs/cluster.md). The figures each test measures are printed
(`pytest -s`) as `measured: ...` lines.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from test_serve import APP, TOKEN, TOKEN_ENV, Load, PlainCallers, Pool, assert_scores, expected, free_port, replica_actors
from test_serve import checkpoints, direct, texts  # noqa: F401 - fixtures
from test_train import train_tiny

pytestmark = pytest.mark.slow

# One CPU per node: each of a run's two training workers (one CPU each) needs a node of its own, so the worker
# node always holds one; serving replicas (one CPU each here) spread the same way.
NODE = {"num_cpus": 1, "object_store_memory": 150 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node, in a temp dir of their own (RAY_TMPDIR: Ray's address file stays out of
    /tmp/ray, so no other `ray.init()` on this machine joins this cluster), on free ports."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's unix sockets live below it
    os.makedirs(f"{temp_dir}/ray")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    nodes = None
    try:
        nodes = Cluster(initialize_head=True, head_node_args={
            **NODE, "temp_dir": f"{temp_dir}/ray", "gcs_server_port": free_port(), "dashboard_port": free_port(),
            "include_dashboard": True})  # the dashboard's state API: Ray Train and the node checks below use it
        nodes.add_node(**NODE)
        ray.init(address=nodes.address, log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        if nodes is not None:
            nodes.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(temp_dir, ignore_errors=True)


def worker_node(cluster):
    [node] = list(cluster.worker_nodes)
    return node


def actors_on(node, class_fragment: str) -> list:
    from ray.util.state import list_actors

    return [a for a in list_actors(filters=[("node_id", "=", node.node_id), ("state", "=", "ALIVE")])
            if class_fragment in a.class_name]


def replace_node(cluster, node) -> tuple[float, object]:
    """Kill `node` as a lost machine dies: every Ray worker process on it (training workers, replicas) and its
    raylet SIGKILLed at once, nothing shut down gracefully; then a fresh node joins. Returns (the kill's time,
    the new node)."""
    import signal

    from ray.util.state import list_workers

    pids = [w.pid for w in list_workers(filters=[("node_id", "=", node.node_id)], limit=10_000) if w.is_alive]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)
    killed_at = time.monotonic()
    return killed_at, cluster.add_node(**NODE)


def losses(checkpoint: str) -> dict[int, float]:
    meta = json.loads((Path(checkpoint) / "rlhf_rm.json").read_text())
    return {entry["step"]: entry["train/loss"] for entry in meta["metrics_log"] if "train/loss" in entry}


TRAIN = ["trainer.epochs=1", "batching.tokens_per_worker=500", "trainer.checkpoint_every=2",
         "trainer.max_failures=3"]  # the failure budget a cluster job gets from the launcher


def test_a_training_node_killed_mid_epoch_resumes_on_a_node_that_joins(cluster, tmp_path, tiny_backbone):
    """Two workers, one per node. The worker node is killed mid-epoch: Ray Train (max_failures) restarts the
    group from the latest checkpoint in storage once a fresh node joins; every step is trained once and the loss
    curve equals an uninterrupted run's."""
    from rlhf_rm.checkpoint.metadata import read_metadata

    straight = train_tiny(tmp_path / "straight", tiny_backbone, [*TRAIN, "run_name=straight"])
    outcome: dict = {}

    def target():
        try:
            outcome["metrics"] = train_tiny(tmp_path / "killed", tiny_backbone, [*TRAIN, "run_name=node_killed"])
        except BaseException as error:  # noqa: BLE001 - surfaced by the assertions below
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    progress = tmp_path / "killed" / "run" / "progress.json"
    snapshot = tmp_path / "killed" / "ray" / "node_killed" / "checkpoint_manager_snapshot.json"
    killed, killed_at, resumed_after = None, None, None
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and thread.is_alive():
        try:
            position = json.loads(progress.read_text()) if progress.exists() else {}
        except json.JSONDecodeError:
            position = {}
        if killed is None and snapshot.exists() and 3 <= position.get("step", 0) <= position["total_steps"] - 3:
            node = worker_node(cluster)
            assert actors_on(node, "Worker"), "the worker node holds no training worker"
            killed = position
            killed_at, _ = replace_node(cluster, node)
        elif killed is not None and position.get("pid") not in (None, killed["pid"]):
            resumed_after = time.monotonic() - killed_at  # a worker of the restarted group trained a step
            break
        time.sleep(0.05)
    thread.join(timeout=400)
    assert killed is not None, "never saw the run with a registered checkpoint and 3+ steps to go"
    assert "error" not in outcome, outcome.get("error")
    meta = read_metadata(outcome["metrics"]["checkpoint"]).to_dict()
    assert meta["resumed_from"] and 0 < meta["resumed_from"][0] <= killed["step"]
    trained = [tuple(s) for s in meta["trained_steps"]]
    assert len(trained) == len(set(trained)) == meta["steps"] == killed["total_steps"]  # every step, once
    want, got = losses(straight["checkpoint"]), losses(outcome["metrics"]["checkpoint"])
    assert sorted(got) == sorted(want) == list(range(1, meta["steps"] + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    assert resumed_after is not None
    print(f"\nmeasured: {resumed_after:.1f} s from killing the training node (at step {killed['step']}) to the "
          f"next trained step; load average {open('/proc/loadavg').read().split()[:3]}")


def test_a_serving_node_killed_under_8_callers_fails_no_request_and_the_pool_heals(cluster, checkpoints, direct,
                                                                                     texts):
    """Two replicas, one on the head and one on the worker node. The worker node is killed while 8 plain HTTP
    callers (no retries of their own) and two RewardClients score: every plain answer is a 200 with exact
    scores or a 503 with Retry-After, every RewardClient call is answered exactly, and once a fresh node joins
    the pool serves with two replicas again."""
    from ray import cloudpickle, serve

    import test_serve
    from rlhf_rm.serve.app import controller_options, http_options, start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig

    cloudpickle.register_pickle_by_value(test_serve)
    os.environ[TOKEN_ENV] = TOKEN
    config = ServeConfig(app_name=APP, port=free_port(), num_replicas=2, num_cpus_per_replica=1, token_env=TOKEN_ENV,
                         live=LiveSettings(checkpoint=checkpoints[0], max_batch_size=64, batch_wait_timeout_s=0.01))
    # One HTTP proxy, on the head: on this one machine a proxy per node would bind the same port. That proxy would
    # send everything to the replica beside it (Serve prefers local replicas) and the killed one would hold no
    # request; spreading its requests over both replicas is what the test is about.
    options = controller_options(config.ingress)
    options["runtime_env"]["env_vars"]["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    serve.start(proxy_location="HeadOnly", http_options=http_options(config), controller_options=options)
    try:
        start(config)
        pool = Pool(config, f"http://127.0.0.1:{config.port}", *checkpoints)
        node = worker_node(cluster)
        wait_for_replicas(2, 120)
        assert actors_on(node, "ServeReplica"), "no replica on the worker node"
        want = expected(direct[0], *texts)
        with Load(pool, texts) as load, PlainCallers(pool, texts, 8) as plain:
            load.wait_for(4)
            before = len(plain.answers)
            killed_at, new_node = replace_node(cluster, node)
            healed_after = wait_for_replicas(2, 180, since=killed_at, node=new_node)
            load.wait_for(4)
            after = len(plain.answers)
        statuses = [status for _, status, *_ in plain.answers]
        failed = [s for s in statuses if s not in (200, 503)]
        unavailable = statuses.count(503)
        assert failed == [], failed
        assert all(retry_after for _, status, retry_after, *_ in plain.answers if status == 503)
        for index, status, _, _, scores in plain.answers:
            if status == 200:
                assert_scores(scores, [want[index]])
        assert after > before and load.errors == []
        retried = sum(1 for answer in plain.answers if answer[3])  # replayed by the proxy on the other replica
        assert retried + unavailable > 0, "the kill hit no request in flight: the test proved nothing"
        for scores in load.results:
            assert_scores(scores, want[:4])
        print(f"\nmeasured: {len(failed)} requests failed of {len(statuses)} ({unavailable} answered 503 + "
              f"Retry-After, {retried} retried by the proxy); two replicas serve again {healed_after:.1f} s after "
              f"the node was killed; load average {open('/proc/loadavg').read().split()[:3]}")
    finally:
        serve.shutdown()
        os.environ.pop(TOKEN_ENV, None)
        cloudpickle.unregister_pickle_by_value(test_serve)


def test_streaming_preparation_reads_sources_and_cache_on_the_driver_node(cluster, tmp_path, monkeypatch,
                                                                         tiny_backbone, tiny_tokenizer):
    """data.streaming=true on two nodes: the preparation actors (which read the source files) and the shard
    readers (which read the node-local cache) run on the driver's node only, where those files are; the
    training workers on other nodes get encoded blocks through the object store."""
    import ray
    from ray.util.state import list_tasks

    from conftest import FIXTURES
    from rlhf_rm.config import DataConfig
    from rlhf_rm.prepare import build_encoder, prepare_streamed_train

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))  # node-local: on this (the driver's) disk
    data = DataConfig(train=str(FIXTURES / "hh_train_small.jsonl"), streaming=True, rows_per_unit=8, max_length=256)
    prepared = prepare_streamed_train(data, build_encoder(tiny_tokenizer, data), tiny_backbone, tmp_path / "run",
                                      workers=4)
    driver_node = ray.get_runtime_context().get_node_id()
    manifest = json.loads((Path(prepared.summary["cache"]["path"]) / "manifest.json").read_text())
    assert manifest["prepared_on"] == [driver_node]
    assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) >= 2  # another node was there to take them
    rows = prepared.streamed.dataset().take_all()
    assert len(rows) == prepared.count == 40
    placed = {t.node_id for t in list_tasks(detail=True, limit=10_000) if "_read_shards" in t.name and t.node_id}
    assert placed == {driver_node}, placed  # (tasks Ray Data cancelled before placing them have no node)


def wait_for_replicas(count: int, timeout: float, since: float | None = None, node=None) -> float | None:
    """Wait until the app runs `count` replicas that answer (one on `node` when given); returns the seconds
    since `since`."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP)
        running = status is not None and status.status == "RUNNING" and len(replica_actors()) == count
        if running and (node is None or actors_on(node, "ServeReplica")):
            return time.monotonic() - since if since is not None else None
        time.sleep(0.25)
    raise AssertionError(f"pool not back to {count} replicas: {serve.status().applications.get(APP)}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s", "-q"]))
