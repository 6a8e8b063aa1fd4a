"""Pointwise rows {"prompt", "response", "score"}: the layout's validation, encoding and cache, the
pointwise_mse loss against hand-computed values, and its dev metric (training it: tests/test_loss_training.py)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES
from rlhf_rm.batching.tokenize import EncodedGroup
from rlhf_rm.data import DataError, ScoredResponse, load_pairs
from rlhf_rm.losses import LossDataMismatch, LossInputs, build_loss, check_loss_fits_data

POINTWISE = FIXTURES / "pointwise_small.jsonl"


def test_pointwise_rows_load_as_scored_responses():
    examples, report = load_pairs(POINTWISE)
    assert report.used == 8 and all(isinstance(e, ScoredResponse) for e in examples)
    assert (examples[0].response, examples[0].score) == (
        " Put it in boiling water for about nine minutes, then cool it in cold water.", 1.0)
    assert examples[3].origin == f"{POINTWISE}:4" and examples[3].score == -1.0


@pytest.mark.parametrize("row,reason", [
    ({"prompt": "Q", "response": " a", "scor": 1.0}, "missing key 'score' (did you mean 'scor'?)"),
    ({"prompt": "Q", "response": " a", "score": "good"}, "'score' must be a finite number, got 'good'"),
    ({"prompt": "Q", "response": " a", "score": True}, "'score' must be a finite number, got True"),
    ({"prompt": "Q", "response": " a", "score": float("nan")}, "'score' must be a finite number, got nan"),
    ({"prompt": "Q", "response": "  ", "score": 1}, "'response' is empty"),
    ({"prompt": "Q", "respons": " a", "score": 1}, "missing key 'response' (did you mean 'respons'?)"),
    ({"prompt": [{"role": "user", "content": "Q"}], "response": [{"role": "user", "content": "a"}], "score": 1},
     "'response': the last message is from 'user', not 'assistant'"),
])
def test_bad_pointwise_row_names_file_and_line(tmp_path, row, reason):
    path = tmp_path / "scored.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "response": " fine", "score": 0.5}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert str(error.value) == f"{path}:2: {reason} (set data.on_error=skip to quarantine bad rows)"


def test_a_pair_with_an_extra_score_column_stays_a_pair():
    from rlhf_rm.data.formats import parse_row

    pair = parse_row({"prompt": "Q", "chosen": " a", "rejected": " b", "score": 3}, "x:1")
    assert (pair.chosen, pair.rejected) == (" a", " b")


def test_pointwise_split_encodes_and_survives_the_cache(tmp_path, monkeypatch, tiny_tokenizer):
    """Through prepare_split (read, encode, the Arrow cache and back): one response per group, its score kept."""
    from rlhf_rm.batching.tokenize import ResponseEncoder
    from rlhf_rm.config import DataConfig
    from rlhf_rm.prepare import prepare_split

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(train=str(POINTWISE), dev=str(FIXTURES / "hh_dev_small.jsonl"), max_length=64)
    encoder = ResponseEncoder(tiny_tokenizer, max_length=64)
    first = prepare_split(cfg, encoder, tmp_path / "run1", "train", seed=0)
    again = prepare_split(cfg, encoder, tmp_path / "run2", "train", seed=0)
    assert again.summary["cache"]["hit"] is True and again.groups == first.groups
    assert first.kinds == {"pointwise"}
    assert sorted(g.score for g in first.groups) == sorted(e.score for e in load_pairs(POINTWISE)[0])
    assert all(g.kind == "pointwise" and len(g.response_ids) == 1 and g.ranks == (0,) for g in first.groups)


def pointwise_group(score: float) -> EncodedGroup:
    return EncodedGroup([], [[1]], kind="pointwise", ranks=(0,), score=score)


def test_pointwise_mse_against_hand_computed_values():
    """Rewards 2.0 and −1.0 for labels 1.5 and 0.0: ((0.5)² + (−1)²) / 2 = 0.625, gradient 2(r − s)/2 = 0.5, −1.
    A pair in the same batch is not a pointwise example: it changes nothing."""
    groups = [pointwise_group(1.5), EncodedGroup([], [[1], [2]]), pointwise_group(0.0)]
    rewards = torch.tensor([[2.0, 0.0], [5.0, -5.0], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False], [True, True], [True, False]])
    loss = build_loss({"name": "pointwise_mse"})(LossInputs.from_groups(groups, rewards, mask))
    assert loss.item() == pytest.approx(0.625)
    loss.backward()
    assert rewards.grad.tolist() == [[0.5, 0.0], [0.0, 0.0], [-1.0, 0.0]]
    # Pairwise losses ignore the pointwise groups; no pointwise group: a zero still attached to the graph.
    pairs_only = LossInputs.from_groups(groups[1:2], rewards[1:2].detach().requires_grad_(), mask[1:2])
    assert build_loss({"name": "pointwise_mse"})(pairs_only).item() == 0.0


def test_a_batch_of_pointwise_groups_only_has_no_pairs():
    """K_max = 1: the trainer's pair statistics (and any pairwise term of a combo) read no pair, not column 1."""
    groups = [pointwise_group(1.0), pointwise_group(0.0)]
    inputs = LossInputs.from_groups(groups, torch.tensor([[0.5], [0.2]]), torch.ones(2, 1, dtype=torch.bool))
    first, second, probability, margin = inputs.pair_rewards()
    assert first.numel() == second.numel() == probability.numel() == margin.numel() == 0
    assert build_loss({"name": "bradley_terry"})(inputs).item() == 0.0


def test_loss_and_data_shapes_are_checked_at_start_up():
    with pytest.raises(LossDataMismatch, match="has pointwise rows .*use loss=pointwise_mse"):
        check_loss_fits_data(build_loss({"name": "bradley_terry"}), {"pointwise"}, set())
    with pytest.raises(LossDataMismatch, match=r"pointwise rows .* only but the data has \['pair'\]"):
        check_loss_fits_data(build_loss({"name": "pointwise_mse"}), {"pair", "pointwise"}, set(), "the data")
    check_loss_fits_data(build_loss({"name": "pointwise_mse"}), {"pointwise"}, set())
    combo = build_loss({"name": "combo", "terms": [{"weight": 1.0, "loss": {"name": "bradley_terry"}},
                                                   {"weight": 1.0, "loss": {"name": "pointwise_mse"}}]})
    check_loss_fits_data(combo, {"pair", "pointwise"}, set())


def test_dev_metrics_report_the_pointwise_error():
    from rlhf_rm.evaluation.metrics import group_metrics, headline

    metrics = group_metrics([pointwise_group(1.0), pointwise_group(-1.0)], [[0.5], [0.0]])
    assert metrics["pointwise_mse"] == pytest.approx((0.25 + 1.0) / 2) and metrics["pointwise"] == 2
    assert (metrics["reward_mean"], metrics["reward_std"]) == (pytest.approx(0.25), pytest.approx(0.25))
    assert headline(metrics) == "pointwise_mse 0.625"
