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
