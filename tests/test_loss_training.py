"""Each loss, plugged into the real batching + model path, lowers itself on a tiny model; and one Ray
Train run learns from pairs and rankings together with a weighted combination."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, SHARED_DATA, require_shared_data
from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.data import PreferencePair, RankedResponses, load_pairs
from rlhf_rm.losses import LOSSES, LossInputs, build_loss

CONFIGS = {
    "bradley_terry": {}, "regularized": {"coefficient": 0.1}, "margin": {"margin": None}, "hinge": {"margin": 1.0},
    "soft_label": {}, "pairwise_all": {}, "plackett_luce": {}, "pointwise_mse": {},
    "combo": {"terms": [{"weight": 0.8, "loss": {"name": "bradley_terry"}},
                        {"weight": 0.2, "loss": {"name": "plackett_luce"}}]},
}


def training_groups(tokenizer):
    encoder = ResponseEncoder(tokenizer, max_length=256)
    pairs, _ = load_pairs(FIXTURES / "hh_train_small.jsonl", limit=12)
    groups = []
    for i, pair in enumerate(pairs):
        labelled = PreferencePair(pair.prompt, pair.chosen, pair.rejected, pair.origin,
                                  probability=0.5 if i % 4 == 3 else 1.0, margin=1.0 + (i % 3))
        groups.append(encoder.encode_example(labelled, "hh"))
    ranking = RankedResponses("\n\nHuman: Rank these.\n\nAssistant:", [" Best answer.", " Fine.", " No.", " ?"],
                              [0, 1, 2, 3], "r:1")
    groups.append(encoder.encode_example(ranking, "ranked"))
    scored, _ = load_pairs(FIXTURES / "pointwise_small.jsonl")  # {"prompt", "response", "score"} rows
    groups += [encoder.encode_example(example, "graded") for example in scored]
    return groups


def test_every_loss_has_a_training_check():
    assert set(CONFIGS) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_decreases_when_trained(name, tiny_backbone, tiny_tokenizer):
    from rlhf_rm.model import load_reward_model

    torch.manual_seed(0)
    model = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=0.5)
    loss_fn = build_loss({"name": name, **CONFIGS[name]})
    groups = [g for g in training_groups(tiny_tokenizer) if g.kind in loss_fn.consumes]
    batch = collate(groups, tiny_tokenizer.pad_token_id, "prefix_shared")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def current_loss():
        rewards, mask = batch.per_group(model(**batch.model_inputs()))
        return loss_fn(LossInputs.from_groups(groups, rewards, mask)), rewards

    before, _ = current_loss()
    for _ in range(15):
        loss, _ = current_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after, rewards = current_loss()
    assert after.item() < 0.8 * before.item(), (before.item(), after.item())


def test_regularized_drives_pair_sums_toward_zero(tiny_backbone, tiny_tokenizer):
    from rlhf_rm.model import load_reward_model

    groups = [g for g in training_groups(tiny_tokenizer) if g.kind == "pair"]
    batch = collate(groups, tiny_tokenizer.pad_token_id, "prefix_shared")

    def centre_after(coefficient: float) -> float:
        torch.manual_seed(0)
        trained = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=0.5)
        loss_fn = build_loss({"name": "regularized", "coefficient": coefficient})
        optimizer = torch.optim.AdamW(trained.parameters(), lr=3e-3)
        for _ in range(20):
            rewards, mask = batch.per_group(trained(**batch.model_inputs()))
            loss_fn(LossInputs.from_groups(groups, rewards, mask)).backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            rewards, _ = batch.per_group(trained(**batch.model_inputs()))
        return float((rewards[:, 0] + rewards[:, 1]).pow(2).mean())

    plain, regularized = centre_after(0.0), centre_after(1.0)
    assert regularized < 0.25 * plain, (plain, regularized)


@pytest.mark.slow
def test_general_experiment_trains_on_pairs_rankings_and_ties(tmp_path, tiny_backbone):
    """`experiment=general` (HH pairs + OASST rankings + QA-Feedback soft labels and ties, loss=combo of
    soft_label and plackett_luce) on a tiny model and 8 rows per source: it learns, and every dev source has
    its own accuracy row and chosen shorter / longer split."""
    require_shared_data("oasst-ranked")
    require_shared_data("qa-feedback")
    import json

    from rlhf_rm.train import run
    from test_config import compose

    cfg = compose([f"model.path={tiny_backbone}", "experiment=general", "data.limit=8", "data.dev_limit=12",
                   "data.max_length=128", "trainer.epochs=4", "trainer.lr=2e-3",
                   "batching.tokens_per_worker=800", "trainer.log_every=1", "logger=none",
                   f"trainer.storage_path={tmp_path / 'ray'}", "ray.num_cpus=2"])
    import ray

    try:
        metrics = run(cfg, tmp_path / "run")
    finally:
        ray.shutdown()  # run() started a local Ray; later modules start their own
    train = metrics["data"]["train"]["sources"]
    assert train["qa_feedback"]["ties"] > 0 and train["oasst"]["examples"] > 0  # ties and rankings are trained on
    for source in ("hh_rlhf", "oasst", "qa_feedback"):
        assert f"dev_accuracy/{source}" in metrics and f"dev_pairs_chosen_shorter/{source}" in metrics, source
    assert {"dev_accuracy", "dev_tie_aware_accuracy"} <= set(metrics)
    log = json.loads((tmp_path / "run" / "checkpoint" / "rlhf_rm.json").read_text())["metrics_log"]
    losses = [e["train/loss"] for e in log if "train/loss" in e]
    quarter = max(len(losses) // 4, 1)
    assert sum(losses[-quarter:]) / quarter < sum(losses[:quarter]) / quarter