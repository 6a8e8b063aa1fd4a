"""data.length_balance: within each bin of length difference, as many "chosen longer" as "chosen shorter" pairs."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict

import pytest

from conftest import FIXTURES
from rlhf_rm.batching.tokenize import EncodedGroup
from rlhf_rm.prepare.length_balance import balance_by_length


def pair(chosen: int, rejected: int, probability: float = 1.0, tag: str = "") -> EncodedGroup:
    return EncodedGroup(prompt_ids=[1], response_ids=[[2] * chosen, [3] * rejected], probability=probability,
                        response_lengths=[chosen, rejected], source=tag)


def direction_counts(groups, bin_tokens):
    """(bin, chosen longer?) → pairs, over strict pairs of unequal length."""
    counts = Counter()
    for g in groups:
        if g.kind != "pair" or g.probability == 0.5:
            continue
        chosen, rejected = g.lengths()
        if chosen != rejected:
            counts[(abs(chosen - rejected) // bin_tokens, chosen > rejected)] += 1
    return counts


def skewed_pairs(n: int = 300, seed: int = 0) -> list[EncodedGroup]:
    """As in HH-RLHF harmless: near-equal pairs mostly chosen longer, far-apart pairs mostly chosen shorter."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        gap = rng.randint(1, 80)
        chosen_longer = rng.random() < (0.7 if gap < 16 else 0.25)
        short = rng.randint(5, 40)
        chosen, rejected = (short + gap, short) if chosen_longer else (short, short + gap)
        groups.append(pair(chosen, rejected, tag=f"p{i}"))
    return groups


def test_downsample_evens_every_bin_keeps_the_minority_and_the_order():
    groups = skewed_pairs()
    neutral = [pair(9, 9, tag="equal"), pair(4, 30, probability=0.5, tag="tie"),
               EncodedGroup(prompt_ids=[1], response_ids=[[2], [3] * 50, [4] * 9], kind="ranking", ranks=(0, 1, 2),
                            source="ranking")]
    before = direction_counts(groups, 16)
    assert any(before[(b, True)] != before[(b, False)] for b, _ in before)  # the input is skewed per bin
    balanced, report = balance_by_length(groups + neutral, "downsample", bin_tokens=16, seed=0)

    after = direction_counts(balanced, 16)
    for b in {b for b, _ in before}:
        minority = min(before[(b, True)], before[(b, False)])
        assert after[(b, True)] == after[(b, False)] == minority
    tags = [g.source for g in balanced]
    assert tags == [g.source for g in groups + neutral if g.source in set(tags)]  # input order, nothing repeated
    assert {"equal", "tie", "ranking"} <= set(tags)  # neither direction: kept as they are
    assert report["dropped"] == len(groups) - sum(after.values())
    assert report["groups"] == len(balanced) == len(groups) + len(neutral) - report["dropped"]
    assert (report["chosen_longer"], report["chosen_shorter"]) == \
        (sum(v for (_, longer), v in before.items() if longer), sum(v for (_, longer), v in before.items() if not longer))

    again, _ = balance_by_length(groups + neutral, "downsample", bin_tokens=16, seed=0)
    other, _ = balance_by_length(groups + neutral, "downsample", bin_tokens=16, seed=1)
    assert [g.source for g in again] == tags  # seeded: the same subset in every run and on every worker
    assert [g.source for g in other] != tags


def test_upsample_repeats_only_the_minority_until_every_bin_is_even():
    groups = skewed_pairs(seed=3)
    before = direction_counts(groups, 16)
    balanced, report = balance_by_length(groups, "upsample", bin_tokens=16, seed=0)
    after = direction_counts(balanced, 16)
    for b in {b for b, _ in before}:
        majority, minority = max(before[(b, True)], before[(b, False)]), min(before[(b, True)], before[(b, False)])
        assert after[(b, True)] == after[(b, False)] == (majority if minority else 0)
    repeated = Counter(g.source for g in balanced) - Counter(g.source for g in groups)
    assert sum(repeated.values()) == report["repeated"] == len(balanced) - len(groups) + report["dropped"]
    # A bin with no pair of the other direction cannot be evened by repeats: its pairs are dropped and counted.
    lonely = [(b, longer) for (b, longer), v in before.items() if v and not before[(b, not longer)]]
    assert report["bins_without_minority"] == len({b for b, _ in lonely})
    assert report["dropped"] == sum(before[key] for key in lonely)


def test_a_lone_direction_bin_in_upsample_mode_is_dropped_and_counted():
    groups = [pair(10, 5, tag="a"), pair(5, 10, tag="b"), pair(5, 10, tag="c"), pair(100, 5, tag="far")]
    balanced, report = balance_by_length(groups, "upsample", bin_tokens=16, seed=0)
    assert sorted(g.source for g in balanced) == ["a", "a", "b", "c"]
    assert (report["repeated"], report["dropped"], report["bins_without_minority"]) == (1, 1, 1)


def test_none_is_the_identity_and_bad_settings_are_named():
    groups = skewed_pairs(20)
    assert balance_by_length(groups, "none", 16, 0) == (groups, None)
    with pytest.raises(ValueError, match="data.length_balance.mode='balanced'"):
        balance_by_length(groups, "balanced", 16, 0)
    with pytest.raises(ValueError, match="bin_tokens"):
        balance_by_length(groups, "downsample", 0, 0)


def test_prepare_split_balances_train_only_and_says_so(tmp_path, monkeypatch, tiny_tokenizer):
    from rlhf_rm.batching.tokenize import ResponseEncoder
    from rlhf_rm.config import DataConfig, LengthBalanceConfig
    from rlhf_rm.prepare import format_data_summary, prepare_split

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    train, dev = FIXTURES / "hh_train_small.jsonl", FIXTURES / "hh_dev_small.jsonl"
    encoder = ResponseEncoder(tiny_tokenizer, max_length=64)
    plain = DataConfig(train=str(train), dev=str(dev), max_length=64)
    cfg = DataConfig(train=str(train), dev=str(dev), max_length=64,
                     length_balance=LengthBalanceConfig(mode="downsample", bin_tokens=8))
    full = prepare_split(plain, encoder, tmp_path / "plain", "train", seed=0)
    balanced = prepare_split(cfg, encoder, tmp_path / "run", "train", seed=0)

    report = balanced.summary["length_balance"]
    assert report["dropped"] > 0 and balanced.count == len(full.groups) - report["dropped"] == report["groups"]
    assert balanced.summary["groups"] == balanced.count
    after = direction_counts(balanced.groups, 8)
    assert all(after[(b, True)] == after[(b, False)] for b, _ in after)
    assert "length balance (downsample, bins of 8 tokens)" in format_data_summary("train", balanced.summary)
    assert full.summary["length_balance"] is None
    # The dev split (tuning or test) is scored as it is.
    dev_split = prepare_split(cfg, encoder, tmp_path / "run", "dev", seed=0)
    assert dev_split.count == len(json.loads(f"[{','.join(dev.read_text().splitlines())}]"))
    assert "length_balance" not in dev_split.summary


def test_streaming_refuses_length_balance_at_start_up(tmp_path):
    from rlhf_rm.config import DataConfig, LengthBalanceConfig
    from rlhf_rm.prepare.streaming import prepare_streamed_split

    cfg = DataConfig(train="x.jsonl", streaming=True, length_balance=LengthBalanceConfig(mode="upsample"))
    with pytest.raises(ValueError, match="length_balance.mode=upsample needs the whole train split"):
        prepare_streamed_split([], cfg, {}, "backbone", tmp_path, tmp_path / "entry", None, workers=1)


def test_the_model_card_and_the_resume_contract_know_about_balancing():
    from rlhf_rm.config import DataConfig, LengthBalanceConfig, TrainConfig
    from rlhf_rm.checkpoint.metadata import CheckpointMetadata
    from rlhf_rm.checkpoint.model_card import _data_section
    from rlhf_rm.prepare.length_balance import format_length_balance
    from rlhf_rm.training.checkpoints import resume_contract

    _, report = balance_by_length(skewed_pairs(), "upsample", bin_tokens=16, seed=0)
    assert "minority-direction pairs repeated" in format_length_balance(report)
    summary = {"train": {"examples": 300, "groups": report["groups"], "length_balance": report}, "dev": {"examples": 9}}
    card = _data_section(CheckpointMetadata.from_dict({"data_summary": summary, "data": {"train": "t.jsonl"}}))
    assert "Length-balanced train pairs (`data.length_balance`, upsample, bins of 16 tokens)" in card
    assert f"→ {report['repeated']} repeated; {report['groups']} groups" in card
    assert f"| groups | {report['groups']} | None |" in card

    def contract(mode):
        data = DataConfig(train="t.jsonl", length_balance=LengthBalanceConfig(mode=mode))
        return resume_contract(TrainConfig(data=data), world=2, total_steps=10)["data"]

    assert contract("downsample") != contract("none")  # a resume under other balancing is refused
    # The default leaves the data digest as checkpoints saved before the option existed have it.
    older = {k: v for k, v in asdict(DataConfig(train="t.jsonl")).items() if k not in ("cache", "length_balance")}
    assert contract("none") == hashlib.sha256(json.dumps(older, sort_keys=True, default=str).encode()).hexdigest()[:16]
