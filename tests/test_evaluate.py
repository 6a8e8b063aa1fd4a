"""Diagnostics on constructed cases, and the evaluation report from a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from rlhf_rm.config import conf_dir
from rlhf_rm.diagnostics import calibration, diagnose, length_bias, pearson, worst_pairs

REPO = Path(__file__).resolve().parents[1]


def test_reward_equal_to_length_is_caught():
    """Reward = response length: correlation exactly 1, every shorter-chosen pair wrong, every
    longer-chosen pair right. Pairs: (chosen, rejected) lengths (10, 20), (30, 5), (8, 40), (50, 12)."""
    chosen_len, rejected_len = [10, 30, 8, 50], [20, 5, 40, 12]
    result = length_bias(chosen_len, rejected_len, chosen_len, rejected_len)
    assert result["reward_length_correlation"] == pytest.approx(1.0)
    assert result["shorter_chosen_pairs"] == 2 and result["shorter_chosen_accuracy"] == 0.0
    assert result["longer_chosen_pairs"] == 2 and result["longer_chosen_accuracy"] == 1.0


def test_length_free_reward_has_no_length_bias():
    """Reward = −length on the same pairs: correlation −1 and the shorter-chosen pairs all right."""
    chosen_len, rejected_len = [10, 30, 8, 50], [20, 5, 40, 12]
    result = length_bias([-x for x in chosen_len], [-x for x in rejected_len], chosen_len, rejected_len)
    assert result["reward_length_correlation"] == pytest.approx(-1.0)
    assert result["shorter_chosen_accuracy"] == 1.0


def test_length_buckets_split_by_the_longer_response():
    """Pair lengths max(c, r): 20, 30 → bucket [0, 32); 40, 50 → [32, 64). Margins +, −, +, +."""
    result = length_bias([1.0, 0.0, 2.0, 3.0], [0.0, 1.0, 1.0, 2.0], [10, 30, 8, 50], [20, 5, 40, 12],
                         edges=(0, 32, 64))
    assert result["by_length_bucket"] == [
        {"low": 0, "high": 32, "pairs": 2, "accuracy": 0.5},
        {"low": 32, "high": 64, "pairs": 2, "accuracy": 1.0},
    ]


def test_perfectly_calibrated_case_has_zero_ece():
    """For each p in {0.55, 0.65, 0.75, 0.85, 0.95}: 20 pairs whose |margin| = logit(p), exactly
    round(20 p) of them oriented right. Each bin then observes frequency p at mean prediction p."""
    chosen, rejected = [], []
    for p in (0.55, 0.65, 0.75, 0.85, 0.95):
        margin = float(np.log(p / (1 - p)))
        right = round(20 * p)
        chosen += [margin] * right + [0.0] * (20 - right)
        rejected += [0.0] * right + [margin] * (20 - right)
    result = calibration(chosen, rejected, bins=10)
    assert result["ece"] == pytest.approx(0.0, abs=1e-9)
    upper = [b for b in result["bins"] if b["count"] and b["low"] >= 0.5]
    assert [round(b["observed_frequency"], 6) for b in upper] == [0.55, 0.65, 0.75, 0.85, 0.95]


def test_overconfident_case_has_large_ece():
    """Margin 10 (σ ≈ 1.0) but only half the pairs right: ECE = |1.0 − 0.5| ≈ 0.5."""
    result = calibration([10.0, 0.0] * 10, [0.0, 10.0] * 10)
    assert result["ece"] == pytest.approx(0.5, abs=1e-3)


def test_worst_pairs_and_reward_stats():
    result = diagnose([1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 2.5, 2.0], [5, 6, 7, 8], [9, 10, 11, 12],
                      sources=["a", "a", "b", "b"], ids=["a:1", "a:2", "b:1", "b:2"], k=2)
    assert [row["id"] for row in result["worst_pairs"]] == ["a:2", "b:1"]
    assert result["worst_pairs"][0]["margin"] == pytest.approx(-3.0)
    assert result["by_source"] == {"a": {"pairs": 2, "accuracy": 0.5}, "b": {"pairs": 2, "accuracy": 0.5}}
    assert result["rewards"]["chosen_mean"] == pytest.approx(0.625)
    assert result["rewards"]["rejected_std"] == pytest.approx(float(np.std([0.0, 1.0, 2.5, 2.0])))
    assert worst_pairs([1.0], [0.0], k=5)[0]["index"] == 0


def test_constant_input_has_undefined_correlation():
    assert pearson(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_tokenizer) -> str:
    from rlhf_rm.model import save_checkpoint

    return str(save_checkpoint(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("ckpt") / "checkpoint",
                               {"max_length": 512}))


def test_report_folder_from_tiny_checkpoint(tmp_path, tiny_checkpoint):
    """The CLI writes the markdown, JSON and PNGs; two files give two data sources."""
    second = tmp_path / "second.jsonl"
    second.write_text("".join((FIXTURES / "hh_dev_small.jsonl").read_text().splitlines(True)[:5]))
    report_dir = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "rlhf_rm.evaluate", tiny_checkpoint,
                    f"data.dev=[{FIXTURES / 'hh_dev_small.jsonl'},{second}]", "report.worst_k=3",
                    f"hydra.run.dir={report_dir}"], cwd=REPO, check=True, capture_output=True, text=True)

    for name in ("reliability.png", "reward_histograms.png", "accuracy_by_length.png", "reward_vs_length.png"):
        data = (report_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"]({name})" in (report_dir / "report.md").read_text()

    report = json.loads((report_dir / "report.json").read_text())
    assert report["rewards"]["pairs"] == 16 + 5
    assert {k: v["pairs"] for k, v in report["by_source"].items()} == {
        str(FIXTURES / "hh_dev_small.jsonl"): 16, str(second): 5}
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    assert len(report["worst_pairs"]) == 3
    assert report["worst_pairs"][0]["margin"] <= report["worst_pairs"][-1]["margin"]

    # The report's scores are the scorer's: re-score one pair directly.
    from rlhf_rm.data import load_pairs
    from rlhf_rm.scoring import RewardScorer

    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    scores = [json.loads(line) for line in (report_dir / "scores.jsonl").read_text().splitlines()]
    direct = RewardScorer(tiny_checkpoint).score([pairs[0].prompt], [pairs[0].chosen])[0].score
    assert scores[0]["chosen"] == pytest.approx(direct, abs=1e-5)
    markdown = (report_dir / "report.md").read_text()
    assert f"| accuracy | {report['rewards']['accuracy']:.3f} |" in markdown


@pytest.mark.parametrize("data", sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml")))
def test_evaluate_config_composes_with_every_data_group(data):
    """`python -m rlhf_rm.evaluate CKPT data=<group>` evaluates that group's dev sources."""
    from rlhf_rm.config import compose
    from rlhf_rm.evaluate import checkpoint_argument_to_override, dev_sources

    argv = checkpoint_argument_to_override(["evaluate", "/ckpt", f"data={data}"])
    cfg = compose(argv[1:], config_name="evaluate")
    assert cfg.checkpoint == "/ckpt"
    sources = dev_sources(cfg.data.dev)
    assert sources and all(Path(spec["path"]).is_absolute() and spec["as_pairs"] for _, spec in sources)
