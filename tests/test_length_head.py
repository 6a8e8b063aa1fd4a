"""ODIN's length head (rlhf_rm/losses/length.py, model.length_head): penalty values, layouts, the saved
checkpoint, the refused settings, and the batch-wide correlation across two workers."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FIXTURES
from rlhf_rm.batching.collate import LAYOUTS, collate
from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.data import load_pairs
from rlhf_rm.losses import LengthPenalty, build_loss
from rlhf_rm.losses.length import pearson
from rlhf_rm.training.steps import length_disentangling, train_step


@pytest.fixture(scope="module")
def groups(tiny_tokenizer):
    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    encoder = ResponseEncoder(tiny_tokenizer, max_length=96)
    return [encoder.encode_example(pair, "hh") for pair in pairs[:4]]


@pytest.fixture()
def odin_model(tiny_backbone, tiny_tokenizer):
    from rlhf_rm.model import load_reward_model

    torch.manual_seed(0)
    return load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=1.0, length_head=True)


def test_penalty_terms_match_hand_computed_values():
    """lengths L = [1, 2, 3, 4], r_Q = [0, 0, 1, 1], r_L = [4, 3, 2, 1]:
    ρ(r_Q, L) = Σ dx·dy / sqrt(Σdx² Σdy²) = 2 / sqrt(5 · 1) = 0.894427; ρ(r_L, L) = −1.
    Weights corr 0.5, length_corr 0.25: 0.5 · 0.894427 + 0.25 · (1 − (−1)) = 0.947214.
    w_Q = [1, 0], w_L = [1, 1]: |cos| = 1/√2 = 0.707107, times ortho weight 2 = 1.414214.
    An ensemble with quality columns [0, 0, 1, 1] and [1, 1, 0, 0] (ρ = ±0.894427) has the same mean |ρ|."""
    penalty = LengthPenalty(corr_weight=0.5, length_corr_weight=0.25, ortho_weight=2.0)
    lengths = torch.tensor([1, 2, 3, 4])
    quality, length = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([4.0, 3.0, 2.0, 1.0])
    value, stats = penalty.correlation(quality, length, lengths)
    assert float(value) == pytest.approx(0.5 * 2 / math.sqrt(5) + 0.25 * 2, abs=1e-6)
    assert float(value) == pytest.approx(0.947214, abs=1e-6)
    assert float(stats["length_corr_quality"]) == pytest.approx(0.894427, abs=1e-6)
    assert float(stats["length_corr_length"]) == pytest.approx(-1.0, abs=1e-6)
    cosine = torch.nn.functional.cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), dim=-1)
    ortho, ortho_stats = penalty.orthogonality(cosine)
    assert float(ortho) == pytest.approx(1.414214, abs=1e-6) and float(ortho_stats["head_cosine"]) == pytest.approx(
        0.707107, abs=1e-6)
    ensemble, _ = penalty.correlation(torch.stack([quality, 1 - quality], dim=1), length, lengths)
    assert float(ensemble) == pytest.approx(0.947214, abs=1e-6)
    x, y = torch.randn(9, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    assert float(pearson(x, y)) == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), abs=1e-9)


def test_equal_lengths_give_zero_correlation_and_finite_gradients():
    """A step whose responses all have the same length (or a constant reward) has no correlation to
    learn: ρ = 0 and the gradient is zero, never NaN (0/0 in a naive Pearson)."""
    rewards = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    value = pearson(rewards, torch.tensor([5.0, 5.0, 5.0]))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(rewards.grad).all() and not rewards.grad.any()
    constant = torch.ones(3, requires_grad=True)
    pearson(constant, torch.tensor([1.0, 2.0, 3.0])).backward()
    assert torch.isfinite(constant.grad).all()


def test_every_layout_gives_the_same_loss_and_statistics(odin_model, tiny_tokenizer, groups):
    """The lengths flow with the batch in every layout (group by group, response tokens as the diagnostics
    count them), and the step's loss and logged correlations do not depend on the layout."""
    expected_lengths = [n for g in groups for n in g.lengths()]  # each response's own tokens, as evaluate counts
    assert len(set(expected_lengths)) > 2  # the correlation has something to measure
    loss_fn, penalty = build_loss({"name": "bradley_terry"}), LengthPenalty()
    results = {}
    for layout in LAYOUTS:
        batch = collate(groups, tiny_tokenizer.pad_token_id, layout)
        assert batch.response_lengths.tolist() == expected_lengths, layout
        optimizer = torch.optim.SGD(odin_model.parameters(), lr=0.0)  # the same weights for every layout
        out = train_step(odin_model, batch, groups, loss_fn, optimizer, length_penalty=penalty)
        results[layout] = (float(out.loss), *(float(out.stats[k]) for k in sorted(out.stats)))
    reference = results["separate"]
    for layout, values in results.items():
        assert values == pytest.approx(reference, abs=1e-4), (layout, results)
    # The logged loss is the preference loss on r_Q + r_L plus the penalty terms.
    batch = collate(groups, tiny_tokenizer.pad_token_id, "separate")
    with torch.no_grad():
        out = odin_model(**batch.model_inputs(), with_length=True)
        rewards, _ = batch.per_group(out.quality + out.length)
        preference = float(-torch.nn.functional.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean())
        penalty_value, _ = length_disentangling(out, batch.response_lengths, penalty)
    assert reference[0] == pytest.approx(preference + float(penalty_value), abs=1e-5)


def test_training_moves_both_heads_toward_their_roles(odin_model, tiny_tokenizer):
    """Both heads are in the optimizer's head group and a few steps on one batch of varied lengths (2 to
    24 response tokens) make the length head track length: ρ(r_L, L) from about 0 to above 0.8."""
    import random

    from rlhf_rm.batching.tokenize import EncodedGroup
    from rlhf_rm.config import TrainerConfig
    from rlhf_rm.training.steps import build_optimizer

    rng = random.Random(0)
    ids = lambda n: [rng.randrange(10, 300) for _ in range(n)]  # noqa: E731
    synthetic = [EncodedGroup(ids(4), [ids(rng.randint(2, 24)), ids(rng.randint(2, 24))]) for _ in range(8)]
    torch.nn.init.normal_(odin_model.hf_model.score.weight, std=0.02)
    torch.nn.init.normal_(odin_model.length_head.weight, std=0.02)
    batch = collate(synthetic, tiny_tokenizer.pad_token_id, "prefix_shared")
    optimizer, _ = build_optimizer(odin_model, TrainerConfig(lr=1e-2, warmup_ratio=0.0), 20)
    heads = [p for g in optimizer.param_groups if g["lr"] == 1e-2 for p in g["params"]]
    assert any(p is odin_model.length_head.weight for p in heads)
    before = odin_model.length_head.weight.detach().clone()
    loss_fn, penalty = build_loss({"name": "bradley_terry"}), LengthPenalty()
    stats = [train_step(odin_model, batch, synthetic, loss_fn, optimizer, length_penalty=penalty).stats
             for _ in range(6)]
    assert not torch.equal(before, odin_model.length_head.weight)
    assert abs(float(stats[0]["length_corr_length"])) < 0.3 < 0.8 < float(stats[-1]["length_corr_length"]), stats


def test_saved_checkpoint_is_the_plain_quality_head(tmp_path, odin_model, tiny_tokenizer, groups):
    """After training steps with the length head, the saved directory is a plain one-label
    AutoModelForSequenceClassification without the length head, whose scores equal the quality head's
    in-training scores; the parity certificate verifies; the model card says a length head was used."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.checkpoint.scorer import RewardScorer

    batch = collate(groups, tiny_tokenizer.pad_token_id, "packed_shared")
    optimizer = torch.optim.AdamW(odin_model.parameters(), lr=1e-2)
    for _ in range(3):
        train_step(odin_model, batch, groups, build_loss({"name": "bradley_terry"}), optimizer,
                   length_penalty=LengthPenalty())
    separate = collate(groups, tiny_tokenizer.pad_token_id, "separate")
    with torch.no_grad():
        in_training = odin_model(**separate.model_inputs(), with_length=True)
    assert not torch.allclose(in_training.quality, in_training.quality + in_training.length)
    metadata = {"max_length": 96, "length_head": {"enabled": True, "corr_weight": 1.0, "length_corr_weight": 1.0,
                                                   "ortho_weight": 1.0}}
    directory = export_checkpoint(odin_model, tiny_tokenizer, tmp_path / "ckpt", metadata)
    assert not [k for k in load_file(str(directory / "model.safetensors")) if "length" in k]
    plain = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    assert plain.config.num_labels == 1 and plain.score.weight.shape[0] == 1
    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = [tokenizer.decode(g.prompt_ids + r) for g in groups for r in g.response_ids]
    scores = []
    with torch.no_grad():
        for text in texts:
            scores.append(float(plain(**tokenizer(text, return_tensors="pt", truncation=True)).logits[0, 0]))
    torch.testing.assert_close(torch.tensor(scores), in_training.quality, atol=1e-4, rtol=0)
    RewardScorer(str(directory))  # re-scores the certificate's canaries; raises when they moved
    card = (directory / "README.md").read_text()
    assert "length head (ODIN" in card and "quality head alone" in card


def test_refused_settings_are_config_errors(tiny_backbone):
    from rlhf_rm.config import ConfigError, compose, settings_from

    base = [f"model.path={tiny_backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
            "model.length_head.enabled=true"]
    settings = settings_from(compose([*base, "deepspeed=zero2", "model.ensemble_size=2"]))
    assert settings.model.length_head.enabled and settings.model.length_head.corr_weight == 1.0
    with pytest.raises(ConfigError, match="length head does not run under DeepSpeed ZeRO-3"):
        settings_from(compose([*base, "deepspeed=zero3"]))
    with pytest.raises(ConfigError, match="model.length_head.ortho_weight=-1.0: must be >= 0"):
        settings_from(compose([*base, "model.length_head.ortho_weight=-1"]))
    settings_from(compose([f"model.path={tiny_backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
                           "deepspeed=zero3"]))  # ZeRO-3 without the length head stays allowed


def _two_worker_gradients(rank: int, world: int, port: int, rows: list, queue) -> None:
    """One of two gloo workers: its rows' penalty, backward, and the gradients averaged as DDP does."""
    import torch.distributed as dist

    from rlhf_rm.model import HeadRewards

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        features, lengths, w_q, w_l = _penalty_problem()
        w_q.requires_grad_(True)
        w_l.requires_grad_(True)
        mine = torch.tensor(rows[rank])
        value, _ = length_disentangling(_head_rewards(HeadRewards, features[mine], w_q, w_l), lengths[mine],
                                        LengthPenalty(0.5, 0.25, 2.0))
        value.backward()
        grads = torch.cat([w_q.grad, w_l.grad])
        dist.all_reduce(grads)
        queue.put((rank, float(value), (grads / world).tolist()))
    finally:
        dist.destroy_process_group()


def _penalty_problem():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([3, 9, 4, 15, 2, 7, 7, 12, 5, 1])
    return features, lengths, torch.randn(4, generator=generator, dtype=torch.float64), torch.randn(
        4, generator=generator, dtype=torch.float64)


def _head_rewards(head_rewards, features, w_q, w_l):
    cosine = torch.nn.functional.cosine_similarity(w_q.unsqueeze(0), w_l.unsqueeze(0), dim=-1)
    return head_rewards(features @ w_q, features @ w_l, cosine)


@pytest.mark.slow
def test_two_workers_get_the_gradient_of_the_batch_wide_correlation():
    """Two gloo workers holding 6 and 4 of 10 responses: the penalty each reports and the DDP-averaged
    gradient equal one process's on all 10 (ρ over the whole step, not per worker: without the all-gather
    each worker would correlate its own few responses, and without the world-size scaling of the gradient
    averaging would halve the correlation terms)."""
    import socket

    import torch.multiprocessing as mp

    from rlhf_rm.model import HeadRewards

    features, lengths, w_q, w_l = _penalty_problem()
    w_q.requires_grad_(True)
    w_l.requires_grad_(True)
    value, _ = length_disentangling(_head_rewards(HeadRewards, features, w_q, w_l), lengths,
                                    LengthPenalty(0.5, 0.25, 2.0))
    value.backward()
    expected = torch.cat([w_q.grad, w_l.grad])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    rows = [[0, 2, 4, 6, 8, 9], [1, 3, 5, 7]]
    workers = [context.Process(target=_two_worker_gradients, args=(rank, 2, port, rows, queue)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    results = sorted(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    for rank, reported, gradient in results:
        # The penalty computes in float32 (the model's reward dtype): float32 rounding, not float64's.
        assert reported == pytest.approx(float(value), abs=1e-6), rank
        torch.testing.assert_close(torch.tensor(gradient, dtype=torch.float64), expected, atol=1e-6, rtol=0)
