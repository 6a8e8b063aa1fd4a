"""The quality benchmark's README table (benchmarks/quality_bench.py merge): the length-only baseline column."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality_bench  # noqa: E402


def row(arm: str, seed: int, accuracy: float, **counts) -> dict:
    return {"arm": arm, "label": arm, "seed": seed, "device": "cpu", "started": "2026-12-06T00:00:00",
            "train_pairs": 400, "train_seconds": 100.0, "test_accuracy": accuracy, "test_pairs": 10,
            "longer_chosen_accuracy": 0.5, "shorter_chosen_accuracy": 0.5, "reward_length_correlation": 0.0, **counts}


def test_baseline_column_from_stored_counts_and_dash_without_them():
    """10 test pairs, chosen shorter 6, longer 2, equal 2: "shorter wins" = (6 + 1) / 10 = 0.7. TRL seeds at 0.8
    and 0.6 → margins +0.1 and −0.1 (mean +0.000 ± 0.141). An rlhf_rm row without the counts gets "—", named in
    the footnote, never a number."""
    counts = {"shorter_chosen_pairs": 6, "longer_chosen_pairs": 2}
    rows = [row("trl", 0, 0.8, **counts), row("trl", 1, 0.6, **counts), row("rlhf_rm", 0, 0.75)]
    table = quality_bench.merge(rows)
    trl_line = next(line for line in table.splitlines() if line.startswith("| TRL"))
    rlhf_line = next(line for line in table.splitlines() if line.startswith("| rlhf_rm `make train`"))
    assert "| 0.700 ± 0.141 | 0.700 (shorter wins) | +0.000 ± 0.141 |" in trl_line
    assert "| 0.750 | — | — |" in rlhf_line
    assert '"—": the rows rlhf_rm-seed0 did not store the length counts' in table
    assert quality_bench.row_baseline(row("x", 0, 0.1, shorter_chosen_pairs=1, longer_chosen_pairs=8)) == {
        "length_baseline": 0.85, "length_baseline_rule": "longer wins", "equal_length_pairs": 1,
        "margin": pytest.approx(-0.75)}


def test_tuning_rows_get_their_own_table_and_old_data_rows_are_marked():
    """A candidate's tuning-split rows are tabled by their tune accuracy under the test table (the choice's
    evidence), never mixed into it; a test row written before the main job held the tuning split out (no
    "split" key) is marked †, one that says its split is not."""
    counts = {"shorter_chosen_pairs": 6, "longer_chosen_pairs": 2}
    tune = [{**row("lr1e-4_centered", seed, 0.0, **counts), "split": "tune", "tune_accuracy": accuracy,
             "tune_pairs": 10} for seed, accuracy in ((0, 0.9), (1, 0.7))]
    for r in tune:
        del r["test_accuracy"], r["test_pairs"]
    rows = [row("rlhf_rm", 0, 0.75, **counts), {**row("lr1e-4_centered", 0, 0.8, **counts), "split": "test"}]
    table = quality_bench.merge(rows, tune)
    test_part, tune_part = table.split("Choosing the main job")
    assert "| rlhf_rm `make train` before issue 29, 400 pairs † |" in test_part
    assert "lr 1e-4, reward centering 0.01, head N(0, 1/(H+1)) | 1 (0) |" in test_part
    tune_line = next(line for line in tune_part.splitlines() if "reward centering" in line)
    assert "| 2 (0, 1) |" in tune_line and "| 0.800 ± 0.141 | 0.700 (shorter wins) | +0.100 ± 0.141 |" in tune_line
