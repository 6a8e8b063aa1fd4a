"""Scoring reads the last real token from the attention mask: padding side and batch mates change nothing."""

from __future__ import annotations

import pytest
import torch

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.data import PreferencePair

TEXTS = ["Hello there<|im_end|>", "A much longer text that needs padding in any batch it joins, "
         "with several clauses and words<|im_end|>", "Mid length reply, ends with EOS<|im_end|>"]


# Plain-HF style pooling inputs for the model under test (the package itself names the scored token).
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of the last attended token of each row; right or left padding alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).long().argmax(1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift RoPE positions."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def score_padded(model, tokenizer, texts, side):
    tokenizer.padding_side = side
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    rows = torch.arange(len(texts))
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"], positions_from_mask(enc["attention_mask"]),
                     rows, last_token_index(enc["attention_mask"]))


def test_pad_is_distinct_from_eos(tiny_tokenizer, tiny_model):
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert tiny_model.hf_model.config.pad_token_id == tiny_tokenizer.pad_token_id


def test_score_same_alone_in_batch_left_and_right_padding(tiny_model, tiny_tokenizer):
    alone = torch.cat([score_padded(tiny_model, tiny_tokenizer, [t], "right") for t in TEXTS])
    right = score_padded(tiny_model, tiny_tokenizer, TEXTS, "right")
    left = score_padded(tiny_model, tiny_tokenizer, TEXTS, "left")
    assert alone.std() > 1e-3  # the texts really score differently, so equality below means something
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    tokenizer_default = "right"
    tiny_tokenizer.padding_side = tokenizer_default


def test_eos_as_pad_would_shift_hf_pooling_but_not_ours(tiny_model, tiny_tokenizer):
    """With pad == EOS, 'first pad id' pooling picks the wrong token; the mask-based index does not.
    A padded batch (right and left) whose pad id is the EOS id: HF's rule (the token before the first
    pad id) lands one before each text's own EOS, ours on the EOS, and the scores equal each text alone."""
    eos = tiny_tokenizer.eos_token_id
    encoded = [tiny_tokenizer(text)["input_ids"] for text in TEXTS]
    lengths = torch.tensor([len(ids) for ids in encoded])
    assert all(ids[-1] == eos for ids in encoded) and len(set(lengths.tolist())) == len(TEXTS)
    width = int(lengths.max())
    alone = torch.cat([score_padded(tiny_model, tiny_tokenizer, [t], "right") for t in TEXTS])
    for side in ("right", "left"):
        pad = [[eos] * (width - len(ids)) for ids in encoded]
        ids = torch.tensor([i + p if side == "right" else p + i for i, p in zip(encoded, pad)])
        mask = torch.tensor([[1] * len(i) + [0] * len(p) if side == "right" else [0] * len(p) + [1] * len(i)
                             for i, p in zip(encoded, pad)])
        assert (ids == eos).sum(-1).gt(1).any()  # some rows really carry EOS padding
        ours = last_token_index(mask)
        real_eos = lengths - 1 if side == "right" else torch.full_like(lengths, width - 1)
        assert torch.equal(ours, real_eos)
        hf_first_pad = (ids == eos).int().argmax(-1) - 1
        if side == "right":
            assert torch.equal(hf_first_pad, real_eos - 1)  # one token early on every row
        with torch.no_grad():
            scores = tiny_model(ids, mask, positions_from_mask(mask), torch.arange(len(TEXTS)), ours)
        torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)


def test_plain_from_pretrained_matches_our_scores(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from rlhf_rm.checkpoint.export import export_checkpoint

    export_checkpoint(tiny_model, tiny_tokenizer, tmp_path, {"test": True})
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tiny_tokenizer.padding_side = "right"
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = plain(**enc).logits.squeeze(-1)
    torch.testing.assert_close(logits, score_padded(tiny_model, tiny_tokenizer, TEXTS, "right"), atol=1e-5, rtol=0)


def _groups(tokenizer):
    encoder = ResponseEncoder(tokenizer, max_length=1024)
    long_prompt = "\n\nHuman: " + "tell me about the weather in spring and autumn " * 12 + "\n\nAssistant:"
    pairs = [
        PreferencePair(long_prompt, " Warm.", " Cold.", "a:1"),  # long prompt, short responses
        PreferencePair("\n\nHuman: hi\n\nAssistant:", " Hello! " * 30, " Hey.", "a:2"),  # short prompt, long reply
        PreferencePair("\n\nHuman: why?\n\nAssistant:", " Because it is so.", " No idea at all.", "a:3"),
    ]
    return [encoder.encode_pair(p) for p in pairs], encoder


def test_prefix_shared_rows_equal_separate_rows(tiny_model, tiny_tokenizer):
    groups, _ = _groups(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    shared = collate(groups, pad, "prefix_shared")
    separate = collate(groups, pad, "separate")
    assert shared.real_tokens < separate.real_tokens  # the prompt is really computed once
    grads = []
    outputs = []
    for batch in (shared, separate):
        tiny_model.zero_grad()
        rewards, _ = batch.per_group(tiny_model(**batch.model_inputs()))
        rewards.sum().backward()
        outputs.append(rewards.detach())
        grads.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters() if p.grad is not None]))
    tiny_model.zero_grad()
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_k_responses_share_one_prompt(tiny_model, tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=1024)
    group = encoder.encode_group("\n\nHuman: rank these\n\nAssistant:", [" one", " two two", " three " * 5, " 4"])
    other = encoder.encode_group("\n\nHuman: short\n\nAssistant:", [" a", " b", " c", " d"])
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        shared = tiny_model(**collate([group, other], pad, "prefix_shared").model_inputs())
        separate = tiny_model(**collate([group, other], pad, "separate").model_inputs())
    torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-5)


def test_flex_block_mask_rule_equals_the_dense_tree_mask(tiny_tokenizer):
    """The FlexAttention rule (GPU path, trainer.attention=flex) allows exactly what collate's dense mask
    allows, pads included, for pairs and K = 4 rankings of different lengths in one batch."""
    from torch.nn.attention.flex_attention import create_mask

    from rlhf_rm.batching.flex_mask import tree_mask_mod

    encoder = ResponseEncoder(tiny_tokenizer, max_length=1024)
    groups = [encoder.encode_group("\n\nHuman: rank these please\n\nAssistant:", [" one", " two two", " three " * 5, " 4"]),
              encoder.encode_pair(PreferencePair("\n\nHuman: hi\n\nAssistant:", " yes", " no no", "t:1")),
              encoder.encode_group("\n\nHuman: " + "long prompt " * 20 + "\n\nAssistant:", [" a", " b"])]
    batch = collate(groups, tiny_tokenizer.pad_token_id, "prefix_shared")
    rows, width = batch.segment_ids.shape
    rule = create_mask(tree_mask_mod(batch.segment_ids), rows, 1, width, width, device="cpu")
    assert torch.equal(rule, batch.attention_mask)
    assert (batch.segment_ids == -1).any()  # the batch has padding, so the pad rule is exercised
    with pytest.raises(ValueError, match="tree layout"):
        collate(groups, tiny_tokenizer.pad_token_id, "separate").model_inputs(flex=True)


def _mixed_groups(tokenizer):
    encoder = ResponseEncoder(tokenizer, max_length=1024)
    return [encoder.encode_group("\n\nHuman: rank these please\n\nAssistant:", [" one", " two two", " three " * 5, " 4"]),
            encoder.encode_pair(PreferencePair("\n\nHuman: hi\n\nAssistant:", " yes", " no no", "t:1")),
            encoder.encode_group("\n\nHuman: " + "long prompt " * 20 + "\n\nAssistant:", [" a", " b"]),
            encoder.encode_pair(PreferencePair("\n\nHuman: why?\n\nAssistant:", " Because.", " No idea.", "t:2"))]


@pytest.mark.parametrize("layout,row_tokens", [("packed", None), ("packed", 60), ("packed_shared", None),
                                                ("packed_shared", 70)])
def test_packed_rows_equal_separate_forwards(tiny_model, tiny_tokenizer, layout, row_tokens):
    """Several groups (pairs and K = 4 rankings) packed into one row — OpenRLHF's layout (each response with
    its own prompt copy) and ours (each group's prompt once) — give every response the reward and the
    gradients of its own padded row (fp32)."""
    groups = _mixed_groups(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    packed = collate(groups, pad, layout, row_tokens=row_tokens)
    separate = collate(groups, pad, "separate")
    assert packed.input_ids.shape[0] == (1 if row_tokens is None else packed.input_ids.shape[0])
    if row_tokens is not None:
        assert packed.input_ids.shape[0] > 1  # the cap really splits the batch into rows
    expected_tokens = sum(g.separate_length() if layout == "packed" else g.shared_length() for g in groups)
    assert packed.real_tokens == expected_tokens
    outputs, grads = [], []
    for batch in (packed, separate):
        tiny_model.zero_grad()
        rewards, _ = batch.per_group(tiny_model(**batch.model_inputs()))
        (rewards * torch.arange(1, rewards.numel() + 1).view_as(rewards)).sum().backward()
        outputs.append(rewards.detach())
        grads.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters() if p.grad is not None]))
    tiny_model.zero_grad()
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)  # loss weights up to 10: fp32 sums


def test_flex_rule_with_documents_equals_the_dense_packed_mask(tiny_tokenizer):
    from torch.nn.attention.flex_attention import create_mask

    from rlhf_rm.batching.flex_mask import tree_mask_mod

    for layout in ("packed", "packed_shared"):
        batch = collate(_mixed_groups(tiny_tokenizer), tiny_tokenizer.pad_token_id, layout, row_tokens=70)
        rows, width = batch.segment_ids.shape
        rule = create_mask(tree_mask_mod(batch.segment_ids, batch.document_ids), rows, 1, width, width, device="cpu")
        assert torch.equal(rule, batch.attention_mask)
        assert (batch.document_ids.max(dim=1).values > 0).any()  # rows really hold several documents


def test_lora_trains_adapters_and_head_and_saves_merged(tmp_path, tiny_backbone, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from rlhf_rm.config import LoraConfig
    from rlhf_rm.model import apply_lora, load_reward_model, merged_for_saving
    from rlhf_rm.checkpoint.export import export_checkpoint

    torch.manual_seed(0)
    model = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=1.0)
    apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(".score." in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    groups, _ = _groups(tiny_tokenizer)
    batch = collate(groups, tiny_tokenizer.pad_token_id, "prefix_shared")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        rewards, _ = batch.per_group(model(**batch.model_inputs()))
        (-torch.nn.functional.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        adapted = model(**batch.model_inputs())
    export_checkpoint(merged_for_saving(model), tiny_tokenizer, tmp_path, {})
    assert hasattr(model.hf_model, "peft_config")  # training copy untouched by the merge
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    from rlhf_rm.model import RewardModel

    with torch.no_grad():
        reloaded = RewardModel(plain)(**batch.model_inputs())
    torch.testing.assert_close(reloaded, adapted, atol=1e-5, rtol=1e-4)


def test_ensemble_heads_score_mean_and_spread(tmp_path, tiny_backbone, tiny_tokenizer):
    from rlhf_rm.batching.collate import collate as collate_groups
    from rlhf_rm.losses import build_loss
    from rlhf_rm.model import load_reward_model
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.checkpoint.scorer import RewardScorer
    from rlhf_rm.training.recipe import ensemble_loss

    torch.manual_seed(0)
    model = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=1.0, ensemble_size=3)
    groups, _ = _groups(tiny_tokenizer)
    batch = collate_groups(groups, tiny_tokenizer.pad_token_id, "prefix_shared")
    heads = model(**batch.model_inputs())
    assert heads.shape == (len(groups) * 2, 3)
    loss, mean_inputs = ensemble_loss(heads, batch, groups, build_loss({"name": "bradley_terry"}))
    per_head = [build_loss({"name": "bradley_terry"})(ensemble_loss(heads[:, h], batch, groups,
                                                                     build_loss({"name": "bradley_terry"}))[1])
                for h in range(3)]
    torch.testing.assert_close(loss, torch.stack(per_head).mean())
    export_checkpoint(model, tiny_tokenizer, tmp_path, {"max_length": 1024})
    scorer = RewardScorer(str(tmp_path))
    assert scorer.ensemble_size == 3
    pair = ("\n\nHuman: why?\n\nAssistant:", " Because it is so.")
    scored = scorer.score([pair[0]], [pair[1]])[0]
    group = scorer.encode(*pair)
    single = collate_groups([group], tiny_tokenizer.pad_token_id, "separate")
    with torch.no_grad():
        direct = model(**single.model_inputs())[0]
    assert scored.score == pytest.approx(float(direct.mean()), abs=1e-5)
    assert scored.spread == pytest.approx(float(direct.std(unbiased=False)), abs=1e-5)
    assert scored.spread > 0
