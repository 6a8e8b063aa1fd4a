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
from rlhf_rm.evaluation.diagnostics import calibration, diagnose, length_bias, pearson, worst_pairs

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
    assert {k: (v["pairs"], v["accuracy"]) for k, v in result["by_source"].items()} == {"a": (2, 0.5), "b": (2, 0.5)}
    assert result["rewards"]["chosen_mean"] == pytest.approx(0.625)
    assert result["rewards"]["rejected_std"] == pytest.approx(float(np.std([0.0, 1.0, 2.5, 2.0])))
    assert worst_pairs([1.0], [0.0], k=5)[0]["index"] == 0


def test_chosen_shorter_and_longer_split_per_source():
    """Source a: (chosen, rejected) lengths (5, 9) margin +1, (8, 3) margin −1, (4, 4) margin +1 → chosen shorter
    1 pair right, chosen longer 1 pair wrong, the equal-length pair in neither. Source b: (2, 6) margin −1."""
    result = diagnose([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [5, 8, 4, 2], [9, 3, 4, 6],
                      sources=["a", "a", "a", "b"])
    assert result["by_source"]["a"] == {"pairs": 3, "accuracy": pytest.approx(2 / 3), "shorter_chosen_pairs": 1,
                                        "shorter_chosen_accuracy": 1.0, "longer_chosen_pairs": 1,
                                        "longer_chosen_accuracy": 0.0}
    assert result["by_source"]["b"]["shorter_chosen_accuracy"] == 0.0
    assert result["by_source"]["b"]["longer_chosen_accuracy"] is None
    assert result["length"]["shorter_chosen_pairs"] == 2 and result["length"]["shorter_chosen_accuracy"] == 0.5

    from rlhf_rm.evaluation.metrics import source_lines
    from rlhf_rm.training.dev_report import length_metrics

    metrics = length_metrics(result)  # what the trainer adds to its dev metrics (and metrics.json)
    assert metrics["accuracy_chosen_longer"] == 0.0 and metrics["pairs_chosen_shorter"] == 2
    assert metrics["accuracy_chosen_shorter/a"] == 1.0 and metrics["pairs_chosen_longer/b"] == 0
    lines = source_lines({f"dev_{k}": v for k, v in {**metrics, "accuracy/a": 2 / 3, "accuracy/b": 0.0}.items()},
                         prefix="dev_")
    assert lines == ["  all sources: chosen shorter 0.500 (2 pairs), chosen longer 0.000 (1 pairs)",
                     "  a: accuracy 0.667; chosen shorter 1.000 (1 pairs), chosen longer 0.000 (1 pairs)",
                     "  b: accuracy 0.000; chosen shorter 0.000 (1 pairs), chosen longer n/a (0 pairs)"]


def test_constant_input_has_undefined_correlation():
    assert pearson(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_tokenizer) -> str:
    from rlhf_rm.checkpoint.export import export_checkpoint

    return str(export_checkpoint(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("ckpt") / "checkpoint",
                               {"max_length": 512}))


@pytest.mark.slow
def test_report_folder_from_tiny_checkpoint(tmp_path, tiny_checkpoint):
    """The CLI writes the markdown, JSON and PNGs; four files give four data sources, two of them RewardBench
    files (v1 detected by its keys, v2 named with chat prompts) that also get the `rewardbench` block."""
    second = tmp_path / "second.jsonl"
    second.write_text("".join((FIXTURES / "hh_dev_small.jsonl").read_text().splitlines(True)[:5]))
    report_dir = tmp_path / "report"
    rb1, rb2 = FIXTURES / "rewardbench_v1.jsonl", FIXTURES / "rewardbench_v2.jsonl"
    out = subprocess.run([sys.executable, "-m", "rlhf_rm.evaluate", tiny_checkpoint,
                          f"data.dev=[{FIXTURES / 'hh_dev_small.jsonl'},{second},{rb1},"
                          f"{{path:{rb2},format:rewardbench2,prompt_style:chat,name:rb2}}]", "report.worst_k=3",
                          f"hydra.run.dir={report_dir}"], cwd=REPO, check=True, capture_output=True, text=True)

    for name in ("reliability.png", "reward_histograms.png", "accuracy_by_length.png", "reward_vs_length.png"):
        data = (report_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"]({name})" in (report_dir / "report.md").read_text()

    report = json.loads((report_dir / "report.json").read_text())
    assert report["rewards"]["pairs"] == 16 + 5 + 6 + 17  # RewardBench 2: every chosen × rejected pair
    assert {k: v["pairs"] for k, v in report["by_source"].items()} == {
        str(FIXTURES / "hh_dev_small.jsonl"): 16, str(second): 5, str(rb1): 6, "rb2": 17}
    for row in [report["length"], *report["by_source"].values()]:  # the chosen shorter / longer split everywhere
        assert row["shorter_chosen_pairs"] + row["longer_chosen_pairs"] <= row.get("pairs", report["rewards"]["pairs"])
        assert "longer_chosen_accuracy" in row and "shorter_chosen_accuracy" in row
    assert "chosen shorter" in out.stdout and "chosen longer" in out.stdout and "rb2: accuracy" in out.stdout
    check_rewardbench_block(report["rewardbench"], tiny_checkpoint, rb1, rb2)
    assert "rewardbench v1" in out.stdout and "rewardbench v2 [rb2] (chat prompts)" in out.stdout
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    assert len(report["worst_pairs"]) == 3
    assert report["worst_pairs"][0]["margin"] <= report["worst_pairs"][-1]["margin"]

    # The report's scores are the scorer's: re-score one pair directly.
    from rlhf_rm.data import load_pairs
    from rlhf_rm.checkpoint.scorer import RewardScorer

    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    scores = [json.loads(line) for line in (report_dir / "scores.jsonl").read_text().splitlines()]
    direct = RewardScorer(tiny_checkpoint).score([pairs[0].prompt], [pairs[0].chosen])[0].score
    assert scores[0]["chosen"] == pytest.approx(direct, abs=1e-5)
    markdown = (report_dir / "report.md").read_text()
    assert f"| accuracy | {report['rewards']['accuracy']:.3f} |" in markdown


def check_rewardbench_block(block: dict, checkpoint: str, rb1: Path, rb2: Path) -> None:
    """The block's figures are the scorer's: re-score every response directly and apply the rules. The
    checkpoint records no training data, so v1 prompts are HH-style plain text (`auto`), v2 ones chat."""
    from rlhf_rm.data import load_pairs
    from rlhf_rm.evaluation.rewardbench import best_of_n
    from rlhf_rm.checkpoint.scorer import RewardScorer

    scorer = RewardScorer(checkpoint)
    pairs, _ = load_pairs([{"path": str(rb1), "format": "rewardbench", "prompt_style": "plain"}])
    right = [s.score > r.score for s, r in zip(scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs]),
                                               scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs]))]
    v1 = block[str(rb1)]
    assert v1["prompt_style"] == "plain" and v1["rows"] == 6
    assert v1["subsets"]["alpacaeval-easy"]["score"] == (right[0] + right[1]) / 2
    assert v1["subsets"]["hep-python"]["score"] == right[5]
    assert set(v1["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    rows, _ = load_pairs([{"path": str(rb2), "format": "rewardbench2"}])
    scores = [[s.score for s in scorer.score([r.prompt] * len(r.responses), r.responses)] for r in rows]
    v2 = block["rb2"]
    assert v2["prompt_style"] == "chat" and list(v2["subsets"]) == ["Factuality", "Precise IF", "Focus", "Ties"]
    assert v2["subsets"]["Focus"]["score"] == pytest.approx(best_of_n(scores[2][:1], scores[2][1:]))
    assert v2["subsets"]["Ties"]["ref_accuracy"] == float(scores[3][0] > max(scores[3][1:]))
    assert v2["subsets"]["Ties"]["tied_accuracy"] == float(min(scores[4][:3]) > max(scores[4][3:]))


@pytest.mark.parametrize("data", sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml")))
def test_evaluate_config_composes_with_every_data_group(data):
    """`python -m rlhf_rm.evaluate CKPT data=<group>` evaluates that group's dev sources."""
    from rlhf_rm.config import compose
    from rlhf_rm.evaluate import checkpoint_argument_to_override
    from rlhf_rm.evaluation.dev_data import dev_sources

    argv = checkpoint_argument_to_override(["evaluate", "/ckpt", f"data={data}"])
    cfg = compose(argv[1:], config_name="evaluate")
    assert cfg.checkpoint == "/ckpt"
    sources = dev_sources(cfg.data.dev)
    assert sources and all(Path(spec["path"]).is_absolute() and spec["as_pairs"] for _, spec in sources)


def test_evaluate_refuses_data_settings_it_would_ignore():
    """data.max_length (and every other training key) was accepted and silently ignored: the checkpoint's own
    rendering decides lengths. Now the command line says so before anything is loaded; what it reads still works."""
    from rlhf_rm.config import ConfigError
    from rlhf_rm.evaluate import refuse_ignored_overrides

    with pytest.raises(ConfigError, match=r"does not read data\.append_eos, data\.max_length: .*rendering"):
        refuse_ignored_overrides(["checkpoint=/c", "data.max_length=64", "+data.append_eos=true", "data.dev=x"])
    refuse_ignored_overrides(["checkpoint=/c", "data=general", "data.dev=x.jsonl", "data.dev_limit=4",
                              "data.on_error=skip", "data.prompt_separator=A:"])
