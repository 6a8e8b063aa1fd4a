"""Every loss against hand-computed values, its gradients, limits and start-up checks."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_rm.batching.tokenize import EncodedGroup
from rlhf_rm.losses import LOSSES, LossDataMismatch, LossInputs, build_loss, check_loss_fits_data


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def pair_inputs(rewards, probability=None, margin=None) -> LossInputs:
    rewards = torch.tensor(rewards, dtype=torch.float64, requires_grad=True)
    groups = [EncodedGroup([], [[1], [2]], probability=1.0 if probability is None else probability[i],
                           margin=None if margin is None else margin[i]) for i in range(len(rewards))]
    return LossInputs.from_groups(groups, rewards, torch.ones_like(rewards, dtype=torch.bool))


def ranking_inputs(rows: list[list[float]], ranks: list[list[int]]) -> LossInputs:
    k_max = max(len(r) for r in rows)
    matrix = torch.zeros(len(rows), k_max, dtype=torch.float64)
    mask = torch.zeros(len(rows), k_max, dtype=torch.bool)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = True
    matrix.requires_grad_(True)
    groups = [EncodedGroup([], [[1]] * len(r), kind="ranking", ranks=tuple(k)) for r, k in zip(rows, ranks)]
    return LossInputs.from_groups(groups, matrix, mask)


REWARDS = [[2.0, 0.5], [-1.0, 1.0]]
BT = (softplus(-1.5) + softplus(2.0)) / 2


def test_bradley_terry_value():
    assert build_loss({"name": "bradley_terry"})(pair_inputs(REWARDS)).item() == pytest.approx(BT, rel=1e-9)


def test_bradley_terry_gradient_is_analytic_sigmoid():
    inputs = pair_inputs(REWARDS)
    build_loss({"name": "bradley_terry"})(inputs).backward()
    delta = torch.tensor([1.5, -2.0], dtype=torch.float64)
    expected = -torch.sigmoid(-delta) / 2  # d/dΔ of −log σ(Δ) = −σ(−Δ), averaged over 2 pairs
    torch.testing.assert_close(inputs.rewards.grad[:, 0], expected)
    torch.testing.assert_close(inputs.rewards.grad[:, 1], -expected)


def test_regularized_value():
    loss = build_loss({"name": "regularized", "coefficient": 0.1})(pair_inputs(REWARDS))
    assert loss.item() == pytest.approx(BT + 0.1 * (2.5 ** 2 + 0.0 ** 2) / 2, rel=1e-9)


def test_margin_value_with_data_and_constant_margins():
    data = build_loss({"name": "margin", "margin": None})(pair_inputs(REWARDS, margin=[1.0, 0.5]))
    assert data.item() == pytest.approx((softplus(-(1.5 - 1.0)) + softplus(2.0 + 0.5)) / 2, rel=1e-9)
    constant = build_loss({"name": "margin", "margin": 2.0})(pair_inputs(REWARDS))
    assert constant.item() == pytest.approx((softplus(0.5) + softplus(4.0)) / 2, rel=1e-9)


def test_hinge_value():
    loss = build_loss({"name": "hinge", "margin": 1.0})(pair_inputs([[2.0, 0.5], [-1.0, 1.0], [0.0, -0.4]]))
    assert loss.item() == pytest.approx((0.0 + 3.0 + 0.6) / 3, rel=1e-9)


def test_soft_label_value_and_p1_equals_bradley_terry():
    p = [0.7, 0.5]
    loss = build_loss({"name": "soft_label"})(pair_inputs(REWARDS, probability=p))
    expected = ((0.7 * softplus(-1.5) + 0.3 * softplus(1.5)) + (0.5 * softplus(2.0) + 0.5 * softplus(-2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    certain = build_loss({"name": "soft_label"})(pair_inputs(REWARDS, probability=[1.0, 1.0]))
    assert certain.item() == pytest.approx(BT, rel=1e-9)


def test_pairwise_losses_skip_ties():
    inputs = pair_inputs([[2.0, 0.5], [3.0, -3.0]], probability=[1.0, 0.5])
    assert build_loss({"name": "bradley_terry"})(inputs).item() == pytest.approx(softplus(-1.5), rel=1e-9)


def test_plackett_luce_k2_equals_bradley_terry():
    rows = [[2.0, 0.5], [-1.0, 1.0]]
    pl = build_loss({"name": "plackett_luce"})(ranking_inputs(rows, [[0, 1], [0, 1]]))
    assert pl.item() == pytest.approx(BT, rel=1e-9)
    pl_pairs = build_loss({"name": "plackett_luce"})(pair_inputs(rows))
    assert pl_pairs.item() == pytest.approx(BT, rel=1e-9)


def test_plackett_luce_value_k3_and_padding():
    r = [1.0, 3.0, 0.0]  # ranks say response 1 is best, then 0, then 2
    expected = (math.log(sum(math.exp(x) for x in r)) - 3.0) + (math.log(math.exp(1.0) + math.exp(0.0)) - 1.0)
    inputs = ranking_inputs([r, [0.3, 0.1]], [[1, 0, 2], [0, 1]])
    loss = build_loss({"name": "plackett_luce"})(inputs)
    assert loss.item() == pytest.approx((expected + softplus(-0.2)) / 2, rel=1e-9)
    loss.backward()
    assert torch.isfinite(inputs.rewards.grad).all()
    assert inputs.rewards.grad[1, 2] == 0  # padding gets no gradient


def test_pairwise_all_counts_and_weights_prompts_equally():
    big = [3.0, 2.0, 1.0, 0.0]  # K = 4: 6 pairs
    small = [0.0, 1.0]  # K = 2: 1 pair, ranked wrongly
    inputs = ranking_inputs([big, small], [[0, 1, 2, 3], [0, 1]])
    loss = build_loss({"name": "pairwise_all"})(inputs)
    big_pairs = [softplus(-(big[i] - big[j])) for i in range(4) for j in range(i + 1, 4)]
    assert len(big_pairs) == 6
    assert loss.item() == pytest.approx((sum(big_pairs) / 6 + softplus(1.0)) / 2, rel=1e-9)


def test_pairwise_all_skips_tied_ranks():
    inputs = ranking_inputs([[1.0, 0.0, 5.0]], [[0, 1, 1]])  # responses 1 and 2 tie
    loss = build_loss({"name": "pairwise_all"})(inputs)
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(4.0)) / 2, rel=1e-9)


def test_combo_is_weighted_sum():
    config = {"name": "combo", "terms": [{"weight": 0.8, "loss": {"name": "bradley_terry"}},
                                         {"weight": 0.2, "loss": {"name": "regularized", "coefficient": 1.0}}]}
    loss = build_loss(config)(pair_inputs(REWARDS))
    assert loss.item() == pytest.approx(0.8 * BT + 0.2 * (BT + (2.5 ** 2) / 2), rel=1e-9)


@pytest.mark.parametrize("name", ["bradley_terry", "regularized", "soft_label", "plackett_luce", "pairwise_all",
                                  "hinge", "margin"])
def test_stable_at_huge_margins(name):
    config = {"name": name, **({"margin": 1.0} if name in ("margin", "hinge") else {})}
    inputs = pair_inputs([[1e4, -1e4], [-1e4, 1e4]])
    loss = build_loss(config)(inputs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(inputs.rewards.grad).all()


def test_every_registered_loss_has_a_conf_file():
    from pathlib import Path

    from rlhf_rm.config import conf_dir

    conf = Path(conf_dir()) / "loss"
    assert {p.stem for p in conf.glob("*.yaml")} == set(LOSSES)


def test_mismatch_is_a_startup_error():
    with pytest.raises(LossDataMismatch, match="bradley_terry.*ranking"):
        check_loss_fits_data(build_loss({"name": "bradley_terry"}), {"pair", "ranking"}, set())
    with pytest.raises(LossDataMismatch, match="margin"):
        check_loss_fits_data(build_loss({"name": "margin", "margin": None}), {"pair"}, set())
    check_loss_fits_data(build_loss({"name": "plackett_luce"}), {"pair", "ranking"}, set())
    combo = build_loss({"name": "combo", "terms": [{"weight": 1, "loss": {"name": "bradley_terry"}},
                                                   {"weight": 1, "loss": {"name": "pairwise_all"}}]})
    check_loss_fits_data(combo, {"pair", "ranking"}, set())


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        build_loss({"name": "nope"})


def _lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_plackett_luce_tied_ranks_form_one_block():
    """ranks [0, 1, 1], r = [1, 2, 3]: response 0 is picked first, then the tied {1, 2} in no order:
    loss = lse(1, 2, 3) − 1 (the old list-order rule added lse(2, 3) − 2, teaching 1 above 2)."""
    loss = build_loss({"name": "plackett_luce"})(ranking_inputs([[1.0, 2.0, 3.0]], [[0, 1, 1]]))
    assert loss.item() == pytest.approx(_lse(1, 2, 3) - 1)


def test_plackett_luce_tie_at_the_top_shares_one_risk_set():
    """ranks [0, 0, 1], r = [1, 2, 3] (Breslow): (lse(1, 2, 3) − 1) + (lse(1, 2, 3) − 2); the last block is certain."""
    loss = build_loss({"name": "plackett_luce"})(ranking_inputs([[1.0, 2.0, 3.0]], [[0, 0, 1]]))
    assert loss.item() == pytest.approx(2 * _lse(1, 2, 3) - 3)


def test_plackett_luce_does_not_depend_on_the_order_of_tied_items():
    rewards = [[0.3, -1.2, 2.0, 0.7]]
    loss_fn = build_loss({"name": "plackett_luce"})
    a = loss_fn(ranking_inputs(rewards, [[1, 0, 1, 2]]))
    b = loss_fn(ranking_inputs([[rewards[0][2], -1.2, rewards[0][0], 0.7]], [[1, 0, 1, 2]]))  # swap the tied pair
    assert a.item() == pytest.approx(b.item())
    strict = loss_fn(ranking_inputs([[3.0, 2.0, 1.0]], [[0, 1, 2]]))
    assert strict.item() == pytest.approx(_lse(3, 2, 1) - 3 + _lse(2, 1) - 2)  # no ties: the usual PL


def test_plackett_luce_all_tied_group_has_nothing_to_learn():
    inputs = ranking_inputs([[1.0, 5.0, 2.0], [2.0, 0.0, 0.0]], [[0, 0, 0], [0, 1, 2]])
    loss = build_loss({"name": "plackett_luce"})(inputs)
    assert loss.item() == pytest.approx(_lse(2, 0, 0) - 2 + _lse(0, 0) - 0)  # only the second group counts


@pytest.mark.parametrize("name", ["bradley_terry", "soft_label", "margin", "plackett_luce", "pairwise_all"])
def test_probability_below_half_trains_as_the_reversed_pair(tmp_path, name):
    """A row {"chosen": a, "rejected": b, "probability": 0.2} means b is preferred: read through the
    reader and the encoder it is the pair (b, a) with p = 0.8 for every loss."""
    from rlhf_rm.data import load_pairs

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b", "probability": 0.2, "margin": 1.0}\n')
    pairs, _ = load_pairs(str(path))
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].probability) == ("b", "a", pytest.approx(0.8))
    r_a, r_b = 0.4, -0.3  # rewards of a and b; the oriented group holds (b, a)
    loss = build_loss({"name": name, **({"margin": None} if name == "margin" else {})})
    value = loss(pair_inputs([[r_b, r_a]], probability=[pairs[0].probability], margin=[1.0])).item()
    expected = {"bradley_terry": softplus(-(r_b - r_a)), "plackett_luce": softplus(-(r_b - r_a)),
                "pairwise_all": softplus(-(r_b - r_a)), "margin": softplus(-(r_b - r_a - 1.0)),
                "soft_label": 0.8 * softplus(-(r_b - r_a)) + 0.2 * softplus(r_b - r_a)}[name]
    assert value == pytest.approx(expected)


def test_metrics_read_probability_one_way():
    """Metrics, evaluate and score see oriented pairs: accuracy counts the preferred (first) response winning."""
    from rlhf_rm.evaluation.metrics import group_metrics

    groups = [EncodedGroup([], [[1], [2]], probability=0.8, source="x"),
              EncodedGroup([], [[1], [2]], probability=1.0, source="y")]
    metrics = group_metrics(groups, [[1.0, 0.0], [0.0, 1.0]])
    assert metrics["accuracy"] == 0.5
    assert metrics["accuracy/x"] == 1.0 and metrics["accuracy/y"] == 0.0
