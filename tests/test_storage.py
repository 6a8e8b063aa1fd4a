"""Checkpoints across nodes through storage (rlhf_rm/checkpoint/storage.py) against a real S3 API (moto's server mode):
upload, node-local cache, one-line refusals; and, marked slow, a two-node Ray cluster that trains into the
bucket, serves from its URI on the other node and hot-reloads by publishing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_fixtures import free_port, moto_s3
from conftest import FIXTURES

from rlhf_rm.checkpoint.storage import (StorageError, check_checkpoint_uri, check_writable, fetch_checkpoint, join_uri,
                             materialize, upload_dir, uri_for)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as server:
        server.create_bucket("ckpts")
        yield server


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_tokenizer) -> str:
    from rlhf_rm.checkpoint.export import export_checkpoint

    meta = {"reward_mean": 0.1, "reward_std": 2.0, "max_length": 512, "base_model": "tiny-llama"}
    return str(export_checkpoint(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("storage") / "ckpt", meta))


def fake_checkpoint(root: Path, skip: tuple = (), weights: bytes = b"w" * 1000) -> Path:
    """The files storage.py checks for, with placeholder content (what they hold is the loader's business)."""
    root.mkdir(parents=True)
    files = {"rlhf_rm.json": b"{}", "parity_certificate.json": b"{}", "model.safetensors": weights,
             "tokenizer.json": b"{}", "sub/extra.bin": b"x" * 10}
    for name, content in files.items():
        if name not in skip:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
    return root


def one_line(error: pytest.ExceptionInfo, uri: str, *words: str) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith(uri), message
    for word in words:
        assert word in message, message
    return message


def test_round_trip_scores_as_the_local_copy(s3, tiny_checkpoint, tmp_path, monkeypatch):
    from rlhf_rm.checkpoint.scorer import RewardScorer

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    uri = upload_dir(tiny_checkpoint, s3.uri("ckpts", "round_trip"))
    fetched = fetch_checkpoint(uri)
    assert fetched.downloaded and Path(fetched.path).parent == tmp_path / "cache" / "checkpoints"
    local, remote = RewardScorer(tiny_checkpoint), RewardScorer(fetched.path)  # the load re-checks the certificate
    assert remote.certified
    texts = ["Human: hi\n\nAssistant:", " hello there"]
    assert [s.score for s in remote.score([texts[0]], [texts[1]])] == \
        [s.score for s in local.score([texts[0]], [texts[1]])]


def test_second_materialize_is_a_cache_hit(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    uri = upload_dir(fake_checkpoint(tmp_path / "c"), s3.uri("ckpts", "cache_hit"))
    first = fetch_checkpoint(uri)
    inode = os.stat(first.path).st_ino
    second = fetch_checkpoint(uri)
    assert first.downloaded and not second.downloaded
    assert second.path == first.path and os.stat(second.path).st_ino == inode
    assert (Path(first.path) / "sub" / "extra.bin").read_bytes() == b"x" * 10
    # Another checkpoint of exactly the same shape is another cache entry.
    other = upload_dir(fake_checkpoint(tmp_path / "d", weights=b"v" * 1000), s3.uri("ckpts", "cache_hit_2"))
    assert materialize(other) != first.path
    assert (Path(materialize(other)) / "model.safetensors").read_bytes() == b"v" * 1000


@pytest.mark.slow
def test_two_processes_materializing_at_once_download_once(s3, tmp_path):
    uri = upload_dir(fake_checkpoint(tmp_path / "c", weights=os.urandom(4 << 20)), s3.uri("ckpts", "concurrent"))
    code = ("import json, sys; from rlhf_rm.checkpoint.storage import fetch_checkpoint; m = fetch_checkpoint(sys.argv[1]); "
            "print(json.dumps({'path': m.path, 'downloaded': m.downloaded}))")
    env = {**os.environ, "RLHF_RM_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, env=env) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0].decode().strip().splitlines()[-1]) for p in procs]
    assert sorted(r["downloaded"] for r in results) == [False, True], results
    assert results[0]["path"] == results[1]["path"]
    assert not list((tmp_path / "cache" / "checkpoints").glob("*.partial-*"))


def test_a_large_file_downloads_in_few_requests(s3, tmp_path, monkeypatch, caplog):
    """Each read of an S3 file is one ranged GET: with pyarrow's 1 MiB default an 8 MiB file took 8, and the
    540 MB SmolLM2 checkpoint took 200-400 s from moto instead of 8 s."""
    import logging

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    uri = upload_dir(fake_checkpoint(tmp_path / "c", weights=os.urandom(8 << 20)), s3.uri("ckpts", "chunks"))
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        fetched = fetch_checkpoint(uri)
    gets = [r for r in caplog.records if "GET /ckpts/chunks/model.safetensors" in r.getMessage()]
    assert fetched.downloaded and len(gets) == 1, [r.getMessage() for r in gets]


def test_a_killed_download_is_never_used(s3, tmp_path, monkeypatch):
    """What a download killed half way leaves (a .partial dir) is discarded; the entry is downloaded whole."""
    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    uri = upload_dir(fake_checkpoint(tmp_path / "c"), s3.uri("ckpts", "killed"))
    fetched = fetch_checkpoint(uri)
    entry = Path(fetched.path)

    partial = entry.with_name(entry.name + ".partial-99999")
    entry.rename(partial)
    (partial / "model.safetensors").write_bytes(b"w" * 10)  # cut short
    again = fetch_checkpoint(uri)
    assert again.downloaded and again.path == fetched.path and not partial.exists()
    assert (entry / "model.safetensors").stat().st_size == 1000


@pytest.mark.parametrize("missing", ["rlhf_rm.json", "parity_certificate.json", "model.safetensors"])
def test_a_half_uploaded_checkpoint_is_refused_in_one_line(s3, tmp_path, monkeypatch, missing):
    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    uri = s3.uri("ckpts", f"half_{missing}")
    upload_dir(fake_checkpoint(tmp_path / "c", skip=(missing,)), uri)
    with pytest.raises(StorageError) as error:
        materialize(uri)
    one_line(error, uri, "incomplete checkpoint", missing.split(".")[0])
    assert not (tmp_path / "cache" / "checkpoints").exists() or not any((tmp_path / "cache" / "checkpoints").iterdir())


def test_score_and_serve_clis_refuse_a_bad_uri_in_one_line(s3, tmp_path, capsys):
    """Before any model load or replica: exit status 2 and the one line on stderr."""
    from rlhf_rm.score import main as score_cli
    from rlhf_rm.serve.__main__ import main as serve_cli

    uri = s3.uri("ckpts", "half_for_cli")
    upload_dir(fake_checkpoint(tmp_path / "c", skip=("parity_certificate.json",)), uri)
    for cli, argv in ((score_cli, [uri, "--response", "hi"]), (serve_cli, [uri, "detach=true"])):
        with pytest.raises(SystemExit) as exited:
            cli(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"{uri}: incomplete checkpoint (half uploaded, or not a checkpoint): missing " \
                      "parity_certificate.json"


def test_upload_never_overwrites_what_is_stored(s3, tmp_path):
    uri = upload_dir(fake_checkpoint(tmp_path / "c"), s3.uri("ckpts", "kept"))
    with pytest.raises(StorageError) as error:
        upload_dir(fake_checkpoint(tmp_path / "d", weights=b"v" * 1000), uri)
    one_line(error, uri, "already holds files")
    assert (Path(materialize(uri)) / "model.safetensors").read_bytes() == b"w" * 1000


def test_bad_locations_fail_in_one_line_naming_the_uri(s3):
    empty = s3.uri("ckpts", "nothing_here")
    with pytest.raises(StorageError) as error:
        check_checkpoint_uri(empty)
    one_line(error, empty, "no checkpoint there")
    no_bucket = s3.uri("no-such-bucket", "ckpt")
    with pytest.raises(StorageError) as error:
        check_checkpoint_uri(no_bucket)
    one_line(error, no_bucket, "bucket does not exist")
    unreachable = f"s3://ckpts/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    with pytest.raises(StorageError) as error:
        check_checkpoint_uri(unreachable)
    one_line(error, unreachable, "endpoint unreachable")
    typo = f"s3://ckpts/x?endpoint_overide={s3.endpoint}"
    with pytest.raises(StorageError) as error:
        check_checkpoint_uri(typo)
    one_line(error, typo, "endpoint_overide")


def test_credentials_missing_wrong_or_read_only_fail_in_one_line(s3, tmp_path, monkeypatch):
    """With moto checking credentials and IAM policies: a read-only user reads but cannot write outputs,
    unknown keys and no keys at all are refused, each in one line naming the URI."""
    import boto3

    uri = upload_dir(fake_checkpoint(tmp_path / "c"), s3.uri("ckpts", "auth"))
    iam = boto3.client("iam", endpoint_url=f"http://{s3.endpoint}", region_name="us-east-1")
    s3.set_auth(3)  # the 3 IAM calls below are free, everything after them is checked
    try:
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Head*"],
                                                    "Resource": "*"}]}))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        assert check_checkpoint_uri(uri)  # reading is allowed
        outputs = s3.uri("ckpts", "auth_outputs")
        with pytest.raises(StorageError) as error:
            check_writable(outputs)
        one_line(error, outputs, "access refused")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        with pytest.raises(StorageError) as error:
            check_checkpoint_uri(uri)
        one_line(error, uri, "access refused")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
        with pytest.raises(StorageError) as error:
            check_checkpoint_uri(uri)
        one_line(error, uri, "no AWS credentials in the environment")
    finally:
        s3.set_auth(float("inf"))


def test_training_into_a_bucket_it_cannot_write_stops_before_anything_starts(s3, tiny_backbone, tmp_path):
    import ray

    from rlhf_rm.config import compose
    from rlhf_rm.train import run

    storage = s3.uri("no-such-bucket", "rlhf_rm")
    cfg = compose([f"model.path={tiny_backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
                   f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}", "logger=none", "run_name=r1",
                   f"trainer.storage_path='{storage}'"])
    started = ray.is_initialized()
    with pytest.raises(StorageError) as error:
        run(cfg, tmp_path / "run")
    one_line(error, s3.uri("no-such-bucket", "rlhf_rm/r1"), "bucket does not exist")
    assert ray.is_initialized() == started and not (tmp_path / "run").exists()


def test_evaluate_takes_a_uri(s3, tiny_checkpoint, tmp_path, monkeypatch):
    """`python -m rlhf_rm.evaluate URI`: the URI's query (with `=`) is not read as a Hydra override, the
    checkpoint is downloaded and scored, and the report names the URI."""
    from rlhf_rm.config import compose
    from rlhf_rm.evaluate import checkpoint_argument_to_override, evaluate

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    uri = upload_dir(tiny_checkpoint, s3.uri("ckpts", "evaluated"))
    argv = checkpoint_argument_to_override(["evaluate", uri, f"data.dev=[{FIXTURES / 'hh_dev_small.jsonl'}]"])
    cfg = compose(argv[1:], config_name="evaluate")
    assert cfg.checkpoint == uri
    report = evaluate(cfg, tmp_path / "report")
    assert report["checkpoint"] == uri and report["rewards"]["pairs"] == 16
    assert list((tmp_path / "cache" / "checkpoints").iterdir())


def test_uris_keep_their_query_settings(s3):
    import pyarrow.fs as pafs

    base = s3.uri("ckpts", "runs")
    expected = f"s3://ckpts/runs/run1/outputs?endpoint_override={s3.endpoint}&scheme=http"
    assert join_uri(base, "run1", "outputs") == expected
    filesystem, path = pafs.FileSystem.from_uri(join_uri(base, "run1"))
    assert uri_for(filesystem, path, like=base) == join_uri(base, "run1")
    rebuilt = uri_for(filesystem, path)  # no storage_path to copy from: read back from the filesystem
    assert pafs.FileSystem.from_uri(rebuilt)[1] == path and f"endpoint_override={s3.endpoint}" in rebuilt
    assert uri_for(pafs.LocalFileSystem(), "/tmp/x") == "/tmp/x"


# -- two Ray nodes on this machine, checkpoints only through the bucket ---------------------------------
@pytest.fixture(scope="module")
def cluster(s3):
    """Head {"node_a": 10} and worker {"node_b": 10}, 2 CPUs each (a worker of cpus_per_worker=2 fills a node);
    started after the S3 server so every node has the AWS settings."""
    from cluster_fixtures import two_node_cluster

    s3.create_bucket("runs")
    with two_node_cluster(cpus_per_node=2) as running:
        yield running


def node_id(resource: str) -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"])


def train_into_bucket(s3, tiny_backbone, tmp_path, run_name: str, extra: list[str]) -> tuple[dict, str]:
    """A tiny run with trainer.storage_path in the bucket; returns (metrics, the printed checkpoint_uri)."""
    from rlhf_rm.config import compose
    from rlhf_rm.train import run

    cfg = compose([f"model.path={tiny_backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
                   f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}", "batching.tokens_per_worker=1200",
                   "trainer.log_every=1", "logger=none", f"run_name={run_name}",
                   f"trainer.storage_path='{s3.uri('runs', 'rlhf_rm')}'", *extra])
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = run(cfg, tmp_path / "run")
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("checkpoint_uri: ")]
    assert len(lines) == 1, printed.getvalue()[-2000:]
    return metrics, lines[0].removeprefix("checkpoint_uri: ")


def plain_hf_scores(checkpoint: str, texts: list[str]) -> list[float]:
    """transformers only: what any consumer of the checkpoint directory gets."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return [float(model(**tokenizer([text], return_tensors="pt")).logits[0, 0]) for text in texts]


def dev_texts(n: int = 3) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (FIXTURES / "hh_dev_small.jsonl").read_text().splitlines()[:n]]
    cuts = [row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:") for row in rows]
    return [r["chosen"][:c] for r, c in zip(rows, cuts)], [r["chosen"][c:] for r, c in zip(rows, cuts)]


@pytest.mark.slow
def test_two_nodes_train_into_the_bucket_and_the_other_node_serves_the_uri(s3, cluster, tiny_backbone, tmp_path,
                                                                           capsys):
    """Two training workers on two nodes write checkpoints only to the bucket; a replica pinned to node_b
    serves the final checkpoint from its URI and scores as plain HF does on the local copy."""
    import dataclasses

    from ray import serve
    from ray.util.state import list_actors

    from rlhf_rm.score import main as score_cli
    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig
    from rlhf_rm.checkpoint.storage import list_files

    metrics, uri = train_into_bucket(s3, tiny_backbone, tmp_path, "two_nodes",
                                     ["trainer.num_workers=2", "trainer.cpus_per_worker=2", "trainer.max_steps=3"])
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=100)
    assert {w.node_id for w in workers} == {node_id("node_a"), node_id("node_b")}, workers
    assert uri.startswith("s3://runs/rlhf_rm/two_nodes/checkpoint_") and f"endpoint_override={s3.endpoint}" in uri
    outputs = list_files(s3.uri("runs", "rlhf_rm/two_nodes/outputs"))
    assert {"metrics.json", "progress.json", "diagnostics.json"} <= set(outputs), outputs

    config = ServeConfig(app_name="rm_from_bucket", route_prefix="/bucket", port=free_port(), num_replicas=1,
                         num_cpus_per_replica=0.5, token_env=None, replica_resources={"node_b": 1},
                         live=LiveSettings(checkpoint=uri))
    with pytest.raises(StorageError) as error:  # refused before any replica starts
        start(dataclasses.replace(config, live=LiveSettings(checkpoint=s3.uri("runs", "rlhf_rm/nothing"))))
    one_line(error, s3.uri("runs", "rlhf_rm/nothing"), "no checkpoint there")
    assert "rm_from_bucket" not in serve.status().applications
    handle = start(config)
    try:
        info = handle.info.remote().result(timeout_s=120)
        assert info["checkpoint"] == uri and info["node"] == node_id("node_b") and info["certified"]
        assert Path(info["local_checkpoint"]).parent.name == "checkpoints"  # the node's cache, not the run dir
        prompts, responses = dev_texts()
        served = handle.score.remote(prompts, responses).result(timeout_s=120)["scores"]
    finally:
        serve.delete("rm_from_bucket")
    plain = plain_hf_scores(metrics["checkpoint"], [p + r for p, r in zip(prompts, responses)])
    assert served == pytest.approx(plain, abs=1e-5)
    # The CLI takes the URI too (in this process: a cache hit of the download above).
    assert score_cli([uri, "--prompt", prompts[0], "--response", responses[0]]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["score"] == pytest.approx(plain[0], abs=1e-5)


@pytest.mark.slow
def test_publish_to_serve_with_s3_storage_reloads_a_pool_on_another_node(s3, cluster, tiny_backbone, tiny_checkpoint,
                                                                         tmp_path):
    """trainer.publish_to_serve with the bucket as storage: the pool's replica on node_b downloads and serves
    every checkpoint the run reports (the trainer fills node_a)."""

    from ray import serve

    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig
    from rlhf_rm.checkpoint.storage import cache_root, list_files

    first = upload_dir(tiny_checkpoint, s3.uri("runs", "published/initial"))
    app = "rm_published_s3"
    shape = {"app_name": app, "route_prefix": "/published_s3", "port": free_port(), "num_replicas": 1,
             "num_cpus_per_replica": 0.5, "token_env": None}
    handle = start(ServeConfig(**shape, replica_resources={"node_b": 1}, live=LiveSettings(checkpoint=first)))
    before = set(cache_root().iterdir())
    try:
        overrides = [f"{k}={'null' if v is None else v}" for k, v in shape.items()]
        overrides.append("replica_resources={node_b: 1}")
        metrics, uri = train_into_bucket(s3, tiny_backbone, tmp_path, "published", [
            "trainer.num_workers=1", "trainer.cpus_per_worker=2", "trainer.max_steps=4", "trainer.checkpoint_every=2",
            "trainer.publish_to_serve=[" + ",".join(f'"{item}"' for item in overrides) + "]"])
        info = handle.info.remote().result(timeout_s=120)
        assert info["checkpoint"] == uri and info["node"] == node_id("node_b")
    finally:
        serve.delete(app)
    # Every checkpoint of the run (steps 2 and 4) was downloaded once into the nodes' cache by a replica.
    reported = {name.split("/")[0] for name in list_files(s3.uri("runs", "rlhf_rm/published")) if
                name.startswith("checkpoint_") and "/" in name}
    downloaded = [json.loads((entry / "rlhf_rm.json").read_text())["steps"]
                  for entry in set(cache_root().iterdir()) - before if entry.is_dir()]
    assert len(reported) == 2 and sorted(downloaded) == [2, 4], (reported, downloaded)
    assert metrics["step"] == 4
