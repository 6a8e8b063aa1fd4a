"""Ray Train integration on a tiny model: 2 data-parallel workers, DDP and DeepSpeed ZeRO on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES

pytestmark = pytest.mark.slow  # every test here runs Ray (the fast tier leaves them out)



@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    if ray.is_initialized():  # another module's cluster: start from a clean one of known size
        ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)  # keep the dashboard: Ray Train's placement-group cleaner polls the state API
    yield
    ray.shutdown()


def train_tiny(tmp_path, backbone, extra: list[str]):
    from rlhf_rm.config import compose
    from rlhf_rm.train import run

    cfg = compose([f"model.path={backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
                   f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}", "trainer.num_workers=2",
                   "batching.tokens_per_worker=1200", "trainer.lr=2e-3", "trainer.warmup_ratio=0",
                   "trainer.log_every=1", "logger=none", f"trainer.storage_path={tmp_path / 'ray'}", *extra])
    return run(cfg, tmp_path / "run")


def first_and_last_losses(checkpoint: str) -> tuple[float, float]:
    log = json.loads((Path(checkpoint) / "rlhf_rm.json").read_text())["metrics_log"]
    losses = [entry["train/loss"] for entry in log if "train/loss" in entry]
    per_epoch = len(losses) // 6
    return sum(losses[:per_epoch]) / per_epoch, sum(losses[-per_epoch:]) / per_epoch


def test_two_worker_ddp_run_learns_and_checkpoint_reloads(tmp_path, tiny_backbone, ray_cluster, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_rm.data import load_pairs
    from rlhf_rm.checkpoint.scorer import RewardScorer

    metrics = train_tiny(tmp_path, tiny_backbone, ["trainer.epochs=6"])
    checkpoint = metrics["checkpoint"]
    first, last = first_and_last_losses(checkpoint)
    assert last < first * 0.9, (first, last)
    assert (tmp_path / "run" / "metrics.json").exists()

    # The dev metrics reported by the workers (prefix-shared rows) equal a fresh re-scoring of the
    # saved checkpoint (one padded row per text): the checkpoint is exactly the trained model.
    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    scorer = RewardScorer(checkpoint)
    chosen = torch.tensor([s.score for s in scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])])
    rejected = torch.tensor([s.score for s in scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs])])
    assert float((chosen > rejected).double().mean()) == pytest.approx(metrics["dev_accuracy"])
    assert float(chosen.mean()) == pytest.approx(metrics["dev_chosen_mean"], abs=1e-4)

    # The chosen shorter / longer split (issue 16) is in metrics.json and equals that of the re-scoring
    # (response lengths in tokens, as the pair is encoded for training).
    groups = [scorer.encoder.encode_pair(p) for p in pairs]
    chosen_len = torch.tensor([len(g.response_ids[0]) for g in groups])
    rejected_len = torch.tensor([len(g.response_ids[1]) for g in groups])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for side, members in (("shorter", chosen_len < rejected_len), ("longer", chosen_len > rejected_len)):
        assert saved[f"dev_pairs_chosen_{side}"] == int(members.sum()) > 0
        right = (chosen > rejected)[members].double().mean()
        assert saved[f"dev_accuracy_chosen_{side}"] == pytest.approx(float(right))
    # The length-only baseline of the same pairs and the margin over it (issue 29), in metrics.json and the
    # printed dev line.
    from rlhf_rm.evaluation.diagnostics import length_baseline

    baseline = length_baseline(int((chosen_len < rejected_len).sum()), int((chosen_len > rejected_len).sum()), len(pairs))
    assert saved["dev_length_baseline"] == pytest.approx(baseline["length_baseline"])
    assert saved["dev_length_baseline_rule"] == baseline["length_baseline_rule"]
    assert saved["dev_margin_over_length_baseline"] == pytest.approx(metrics["dev_accuracy"] - baseline["length_baseline"])
    dev_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dev: "))
    assert f"length-only baseline {baseline['length_baseline']:.3f} ({baseline['length_baseline_rule']})" in dev_line

    # Plain HF loading, no rlhf_rm code and no manual EOS: the same scores.
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    plain = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    texts = [p.prompt + p.chosen for p in pairs[:4]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        plain_scores = plain(**enc).logits.squeeze(-1)
    torch.testing.assert_close(plain_scores, chosen[:4].float(), atol=1e-5, rtol=0)

    # The CLI prints the same score for one text.
    out = subprocess.run([sys.executable, "-m", "rlhf_rm.score", checkpoint, "--prompt", pairs[0].prompt,
                          "--response", pairs[0].chosen], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["score"] == pytest.approx(float(chosen[0]), abs=1e-5)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_on_cpu(tmp_path, tiny_backbone, ray_cluster, stage):
    """The saved checkpoint (ZeRO-3: gathered from the shards) reloads with plain `from_pretrained` and
    re-scores the dev set to the workers' in-training dev metrics. The ZeRO-2 run also trains ODIN's length
    head (correlations over both workers' responses): the checkpoint is still the one-label quality head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_rm.data import load_pairs
    from rlhf_rm.checkpoint.metadata import read_metadata

    length_head = ["model.length_head.enabled=true"] if stage == "zero2" else []
    metrics = train_tiny(tmp_path, tiny_backbone, [f"deepspeed={stage}", "loss=regularized", "trainer.epochs=6",
                                                   *length_head])
    first, last = first_and_last_losses(metrics["checkpoint"])
    assert last < first * 0.9, (first, last)
    meta = read_metadata(metrics["checkpoint"]).to_dict()
    assert meta["config"]["deepspeed"]["config"]["zero_optimization"]["stage"] == int(stage[-1])
    assert meta["loss"]["name"] == "regularized"
    if length_head:
        assert meta["length_head"]["enabled"] and "quality head only" in meta["length_head"]["saved"]
        logged = [e["train/length_corr_length"] for e in meta["metrics_log"] if "train/length_corr_length" in e]
        assert len(logged) > 6 and max(logged[-3:]) > 0.5, logged

    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(metrics["checkpoint"])
    plain = AutoModelForSequenceClassification.from_pretrained(metrics["checkpoint"]).eval()

    def scores(responses):
        out = []
        for prompt, response in zip([p.prompt for p in pairs], responses):
            enc = tokenizer([prompt + response], return_tensors="pt", truncation=True)
            with torch.no_grad():
                out.append(float(plain(**enc).logits[0, 0]))
        return torch.tensor(out)

    chosen, rejected = scores([p.chosen for p in pairs]), scores([p.rejected for p in pairs])
    assert float(chosen.mean()) == pytest.approx(metrics["dev_chosen_mean"], abs=1e-4)

    assert float(rejected.mean()) == pytest.approx(metrics["dev_rejected_mean"], abs=1e-4)
    assert float((chosen > rejected).double().mean()) == pytest.approx(metrics["dev_accuracy"])


# A training worker killed mid-epoch (resume from the latest checkpoint, every step once, the loss curve of an
# uninterrupted run) is tested where it happens on a cluster: tests/test_nodes.py kills the node holding it.


def train_command(tmp_path, backbone, extra: list[str]) -> list[str]:
    """`python -m rlhf_rm.train` as a user types it (train_tiny's settings), joined to this module's cluster."""
    import ray

    return [sys.executable, "-m", "rlhf_rm.train", f"model.path={backbone}",
            f"data.train={FIXTURES / 'hh_train_small.jsonl'}", f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}",
            "trainer.num_workers=2", "batching.tokens_per_worker=1200", "trainer.lr=2e-3", "trainer.warmup_ratio=0",
            "trainer.log_every=1", "logger=none", f"trainer.storage_path={tmp_path / 'ray'}",
            f"hydra.run.dir={tmp_path / 'run'}", f"ray.address={ray.get_runtime_context().gcs_address}", *extra]


def test_rerun_after_the_driver_dies_resumes_a_lora_ensemble_run(tmp_path, tiny_backbone, ray_cluster):
    """The documented recovery: the driver process dies (SIGKILL) mid-run; rerunning the command it printed at
    start (`resume: ...`, with its random run_name) continues from the latest checkpoint — steps continue, none
    trained twice, the loss curve goes on — for a LoRA + 2-head ensemble run inside real Ray Train (adapters and
    heads restored). The rerun's stdout is piped (as in CI or `ray job logs`): each step it trains prints one line,
    exactly once, and no progress bar or '\\r' redraw reaches the output."""
    import os
    import re
    import shlex
    import signal
    import time

    from rlhf_rm.checkpoint.metadata import read_metadata

    command = train_command(tmp_path, tiny_backbone, [
        "trainer.epochs=2", "batching.tokens_per_worker=500", "trainer.checkpoint_every=3",
        "model.lora.enabled=true", "model.lora.r=4", "model.ensemble_size=2"])  # no run_name: a random one
    first_output = tmp_path / "first_driver.log"
    with first_output.open("w") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    progress = tmp_path / "run" / "progress.json"
    killed, deadline, snapshot = None, time.time() + 240, None
    while killed is None and time.time() < deadline and driver.poll() is None:
        if snapshot is None and (found := re.search(r"^run_name: (\S+)$", first_output.read_text(), re.M)):
            snapshot = tmp_path / "ray" / found.group(1) / "checkpoint_manager_snapshot.json"
        try:
            position = json.loads(progress.read_text()) if progress.exists() else {}
        except json.JSONDecodeError:
            position = {}
        if snapshot and snapshot.exists() and 4 <= position.get("step", 0) and position["step"] + 6 < position[
                "total_steps"]:
            killed = position
            os.kill(driver.pid, signal.SIGKILL)
        time.sleep(0.05)
    driver.wait(timeout=60)
    printed_first = first_output.read_text()
    assert killed is not None, "never saw the first driver with a registered checkpoint and 6+ steps to go\n" + \
        printed_first[-3000:]
    [resume] = re.findall(r"^resume: +(.+)$", printed_first, re.M)
    command = shlex.split(resume)
    assert command[:3] == ["python", "-m", "rlhf_rm.train"] and f"hydra.run.dir={tmp_path / 'run'}" in command
    command[0] = sys.executable  # the printed command, run with this test's interpreter
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)  # the same command
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    meta = read_metadata(metrics["checkpoint"]).to_dict()
    resumed_at = meta["resumed_from"][0]
    assert 0 < resumed_at <= killed["step"]
    trained = [tuple(s) for s in meta["trained_steps"]]
    assert len(trained) == len(set(trained)) == meta["steps"] == killed["total_steps"]
    logged = [entry["step"] for entry in meta["metrics_log"] if "train/loss" in entry]
    assert logged == list(range(1, meta["steps"] + 1))  # the loss curve continues, without a restart at step 1
    assert meta["config"]["model"]["lora"]["enabled"] and meta["config"]["model"]["ensemble_size"] == 2
    assert metrics["dev_ensemble_spread_mean"] > 0  # both heads trained, and differently

    printed = sorted(int(k) for k, _ in re.findall(r"step (\d+)/(\d+) \|", output))
    assert printed == list(range(resumed_at + 1, meta["steps"] + 1)), output[-3000:]  # each once
    assert "\r" not in output and "pair/s]" not in output  # no tqdm bar, from the workers or anywhere else
    assert re.search(r"all sources: chosen shorter [0-9.]+ \(\d+ pairs\), chosen longer [0-9.]+ \(\d+ pairs\)",
                     output), output[-3000:]  # the end-of-training summary splits accuracy by length (issue 16)
    position = json.loads(progress.read_text())
    assert position["step"] == position["total_steps"] == meta["steps"]
