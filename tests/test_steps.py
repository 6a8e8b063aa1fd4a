"""The shared training step and scoring pass (rlhf_rm/training/steps.py) and the model's parameter groups
(rlhf_rm/training/model_state.py), on the tiny model: what the trainer and every benchmark run."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES
from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.config import TrainerConfig
from rlhf_rm.data import load_pairs
from rlhf_rm.losses import build_loss
from rlhf_rm.checkpoint.scorer import score_groups
from rlhf_rm.training.steps import build_optimizer, train_step


@pytest.fixture(scope="module")
def dev_groups(tiny_tokenizer):
    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    encoder = ResponseEncoder(tiny_tokenizer, max_length=128)
    return [encoder.encode_example(pair, "hh") for pair in pairs]


def test_score_groups_does_not_depend_on_layout_or_batching(tiny_model, tiny_tokenizer, dev_groups):
    """Per-group rewards from prefix-shared rows in fixed batches equal those of padded rows cut by a token
    budget: the batch a group lands in does not change its rewards."""
    pad = tiny_tokenizer.pad_token_id
    shared = score_groups(tiny_model, dev_groups, pad, layout="prefix_shared",
                          batches=[list(range(i, min(i + 3, len(dev_groups)))) for i in range(0, len(dev_groups), 3)])
    padded = score_groups(tiny_model, dev_groups, pad, layout="separate", tokens_per_batch=600)
    assert shared.spreads is None and len(shared.rewards) == len(dev_groups)
    assert all(len(r) == 2 for r in shared.rewards)
    torch.testing.assert_close(torch.tensor(shared.rewards), torch.tensor(padded.rewards), atol=1e-4, rtol=1e-4)


def test_score_groups_matches_the_checkpoint_scorer(tmp_path, tiny_model, tiny_tokenizer):
    """RewardScorer (one padded row per text) and score_groups give the same score for each text."""
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.checkpoint.scorer import RewardScorer

    checkpoint = export_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "ckpt", {"max_length": 128})
    scorer = RewardScorer(str(checkpoint))
    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl", limit=6)
    texts = [scorer.encode(p.prompt, p.chosen) for p in pairs]
    direct = score_groups(scorer.model, texts, tiny_tokenizer.pad_token_id, layout="separate")
    assert [r[0] for r in direct.rewards] == pytest.approx(scorer.score_encoded(texts), abs=1e-5)


def test_ensemble_scores_are_the_heads_mean_with_their_spread(tiny_backbone, tiny_tokenizer, dev_groups):
    from rlhf_rm.model import load_reward_model

    torch.manual_seed(0)
    model = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=1.0, ensemble_size=3).eval()
    scored = score_groups(model, dev_groups[:4], tiny_tokenizer.pad_token_id)
    batch = collate(dev_groups[:4], tiny_tokenizer.pad_token_id, "prefix_shared")
    with torch.no_grad():
        heads = model(**batch.model_inputs())  # [responses, 3]
    assert [v for r in scored.rewards for v in r] == pytest.approx(heads.mean(dim=1).tolist(), abs=1e-5)
    assert [v for s in scored.spreads for v in s] == pytest.approx(heads.std(dim=1, unbiased=False).tolist(),
                                                                    abs=1e-5)


def test_train_step_lowers_the_loss_and_trains_the_head_faster(tiny_backbone, tiny_tokenizer, dev_groups):
    from rlhf_rm.model import load_reward_model
    from rlhf_rm.training.model_state import parameter_groups

    torch.manual_seed(0)
    model = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=0.5)
    settings = TrainerConfig(lr=2e-3, head_lr_multiplier=10.0, warmup_ratio=0.0, lr_schedule="constant",
                             betas=[0.8, 0.9])
    optimizer, scheduler = build_optimizer(model, settings, total_steps=8)
    groups = parameter_groups(model)
    assert len(groups["head"]) == 1 and groups["decay"] and groups["no_decay"]  # the score head, found by name
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs[-1] == pytest.approx(10 * lrs[0]) and all(g["betas"] == (0.8, 0.9) for g in optimizer.param_groups)
    loss_fn = build_loss({"name": "bradley_terry"})
    batch = collate(dev_groups[:8], tiny_tokenizer.pad_token_id, "prefix_shared")
    before = groups["head"][0].detach().clone()
    losses = [train_step(model, batch, dev_groups[:8], loss_fn, optimizer, scheduler, max_grad_norm=1.0).loss.item()
              for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses
    assert not torch.equal(before, groups["head"][0].detach())
    assert scheduler.get_last_lr()[0] == pytest.approx(2e-3)
