"""One rendering, certified: a saved checkpoint gives the trained reward however it is loaded.

Plain Hugging Face code (AutoTokenizer + AutoModelForSequenceClassification, `tok(text)`, no manual EOS),
TRL's GRPO reward path (its own `_calculate_rewards`) and our scorer read the same token; every load
re-scores the canaries and refuses, saying what differs.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhf_rm.batching.collate import collate
from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.checkpoint.certificate import CERTIFICATE_FILE, CertificateError, TOLERANCE, read_certificate
from rlhf_rm.data import PreferencePair
from rlhf_rm.losses import LossInputs, build_loss
from rlhf_rm.model import load_reward_model
from rlhf_rm.checkpoint.export import export_checkpoint
from rlhf_rm.checkpoint.rendering import RenderingSpec
from rlhf_rm.checkpoint.scorer import RewardScorer

HH = "\n\nHuman: {}\n\nAssistant:"
CHAT_PROMPT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": "What is a cat?"}]
CASES = [
    ("short", HH.format("How are you?"), " I am fine, thanks."),
    ("multi_turn", HH.format("Hi") + " Hello." + HH.format("What is the weather like today?"), " Sunny and warm."),
    ("long_truncated", HH.format("tell me about the weather in spring and autumn " * 30), " It varies a lot."),
    ("chat", [{"role": "user", "content": "Name a colour."}], [{"role": "assistant", "content": "Blue."}]),
    ("chat_multi_turn", CHAT_PROMPT, [{"role": "assistant", "content": "A small animal."}]),
]
MAX_LENGTH = 96


def _trained_checkpoint(directory, backbone, tokenizer, append_eos: bool) -> str:
    """A tiny model trained a few Bradley-Terry steps under the spec, then saved (certificate included)."""
    torch.manual_seed(0)
    model = load_reward_model(backbone, tokenizer, head_init_std=0.5)
    spec = RenderingSpec.for_tokenizer(tokenizer, MAX_LENGTH, append_eos=append_eos)
    encoder = ResponseEncoder(tokenizer, spec=spec)
    groups = [encoder.encode_pair(PreferencePair(HH.format(f"question {i} " * (i + 1)), " A good answer.",
                                                 " bad", f"t:{i}")) for i in range(6)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = build_loss({"name": "bradley_terry"})
    for _ in range(3):
        batch = collate(groups, tokenizer.pad_token_id, "prefix_shared")
        rewards, mask = batch.per_group(model(**batch.model_inputs()))
        loss = loss_fn(LossInputs.from_groups(groups, rewards, mask))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return str(export_checkpoint(model.eval(), tokenizer, directory, {"rendering": spec.to_dict()}))


@pytest.fixture(scope="module", params=[False, True], ids=["no_eos", "append_eos"])
def checkpoint(request, tmp_path_factory, tiny_backbone, tiny_tokenizer):
    return _trained_checkpoint(tmp_path_factory.mktemp("parity"), tiny_backbone, tiny_tokenizer, request.param)


def _plain_scores(checkpoint: str, texts: list[str]) -> list[float]:
    """What a user who never imports rlhf_rm does: one text at a time, the tokenizer's defaults."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return [float(model(**tok(text, truncation=True, return_tensors="pt")).logits[0, 0]) for text in texts]


def test_plain_hf_scores_equal_ours(checkpoint):
    scorer = RewardScorer(checkpoint)
    assert scorer.certified
    prompts, responses = [c[1] for c in CASES], [c[2] for c in CASES]
    ours = [s.score for s in scorer.score(prompts, responses)]
    texts = [scorer.encoder.render_text(p, r) for p, r in zip(prompts, responses)]
    # A peer renders chat messages with the checkpoint's own template, as TRL and vLLM do.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    assert texts[3] == tok.apply_chat_template(CASES[3][1] + CASES[3][2], tokenize=False)
    assert scorer.score([CASES[2][1]], [CASES[2][2]])[0].truncated  # the long case really is cut
    torch.testing.assert_close(torch.tensor(_plain_scores(checkpoint, texts)), torch.tensor(ours), atol=1e-5, rtol=0)


def test_plain_hf_batch_with_right_padding_equals_ours(checkpoint):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = RewardScorer(checkpoint)
    texts = [scorer.encoder.render_text(c[1], c[2]) for c in CASES]
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        batch = model(**tok(texts, truncation=True, padding=True, return_tensors="pt")).logits[:, 0]
    ours = torch.tensor([s.score for s in scorer.score([c[1] for c in CASES], [c[2] for c in CASES])])
    torch.testing.assert_close(batch, ours, atol=1e-5, rtol=0)


def test_trl_grpo_reward_path_reads_the_trained_token(tmp_path, tiny_backbone, tiny_tokenizer):
    """TRL's GRPOTrainer with `reward_funcs=<checkpoint path>` tokenizes with add_special_tokens=False and no
    EOS: with the default rendering (nothing appended) it reads the same token as training."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    checkpoint = _trained_checkpoint(tmp_path / "ckpt", tiny_backbone, tiny_tokenizer, append_eos=False)
    prompts = [HH.format("How are you?"), HH.format("What is 2+2?")]
    completions = [" I am fine.", " It is 4."]
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, report_to="none", use_cpu=True, bf16=False, logging_steps=1)
    trainer = GRPOTrainer(model=tiny_backbone, reward_funcs=checkpoint, args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}))
    inputs = [{"prompt": p} for p in prompts]
    trl_rewards = trainer._calculate_rewards(inputs, prompts, completions, [[0], [0]])[:, 0].cpu()
    ours = torch.tensor([s.score for s in RewardScorer(checkpoint).score(prompts, completions)])
    torch.testing.assert_close(trl_rewards.float(), ours, atol=1e-5, rtol=0)


def test_certificate_stores_canaries_with_tokens_and_scores(checkpoint):
    certificate = read_certificate(checkpoint)
    names = {c["name"] for c in certificate["canaries"]}
    assert {"short", "long_prompt", "long_response", "chat", "chat_multi_turn"} <= names
    long = [c for c in certificate["canaries"] if c["name"].startswith("long")]
    assert all(c["truncated"] and len(c["input_ids"]) == MAX_LENGTH for c in long)
    metadata = json.loads((__import__("pathlib").Path(checkpoint) / "rlhf_rm.json").read_text())
    assert metadata["rendering"] == certificate["rendering"]


@pytest.fixture()
def tampered(tmp_path, checkpoint):
    directory = tmp_path / "copy"
    shutil.copytree(checkpoint, directory)
    return directory


def test_refuses_a_changed_length(tampered):
    metadata = json.loads((tampered / "rlhf_rm.json").read_text())
    metadata["rendering"]["max_length"] = 64
    (tampered / "rlhf_rm.json").write_text(json.dumps(metadata))
    with pytest.raises(CertificateError, match="max_length: 96 != 64") as error:
        RewardScorer(str(tampered))
    assert "renders to other tokens" in str(error.value) and "max length / truncation" in str(error.value)


def test_refuses_a_changed_eos_rule(tampered):
    metadata = json.loads((tampered / "rlhf_rm.json").read_text())
    metadata["rendering"]["append_eos"] = not metadata["rendering"]["append_eos"]
    (tampered / "rlhf_rm.json").write_text(json.dumps(metadata))
    with pytest.raises(CertificateError, match="append_eos: (True != False|False != True)"):
        RewardScorer(str(tampered))


def test_refuses_a_changed_chat_template(tampered):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tampered)
    tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    tok.save_pretrained(tampered)
    with pytest.raises(CertificateError, match="chat template changed") as error:
        RewardScorer(str(tampered))
    assert "first difference" in str(error.value)


def test_refuses_changed_weights_and_accepts_bf16_within_its_tolerance(tampered):
    from safetensors.torch import load_file, save_file

    path = tampered / "model.safetensors"
    weights = load_file(path)
    bf16 = RewardScorer(str(tampered), dtype="bfloat16")  # the measured tolerance accepts a bf16 load
    assert bf16.certified
    weights["score.weight"] = weights["score.weight"] * 1.01
    save_file(weights, path, metadata={"format": "pt"})
    with pytest.raises(CertificateError, match="same tokens, so the weights, the dtype or the kernels differ"):
        RewardScorer(str(tampered))


def test_bf16_canary_drift_is_inside_the_documented_tolerance(checkpoint):
    """The bf16 tolerance is a measured bound, not a guess: the drift on this model stays well inside it."""
    certificate = read_certificate(checkpoint)
    scorer = RewardScorer(checkpoint, dtype="bfloat16", verify=False)
    scores = scorer.score_encoded([scorer.encode(c["prompt"], c["response"]) for c in certificate["canaries"]])
    atol, rtol = TOLERANCE["bfloat16"]
    assert max(abs(a - c["score"]) - rtol * abs(c["score"]) for a, c in zip(scores, certificate["canaries"])) < atol / 2


def test_missing_certificate_is_loaded_uncertified_with_a_warning(tampered, caplog):
    (tampered / CERTIFICATE_FILE).unlink()
    with caplog.at_level("WARNING"):
        scorer = RewardScorer(str(tampered))
    assert not scorer.certified and "not certified" in caplog.text


def test_a_truncated_pair_scores_the_same_in_training_and_in_the_scorer(checkpoint):
    """Training's prefix-shared batch of a pair cut by max_length gives each response the reward the scorer
    (and plain HF) gives that text alone: one truncation rule, per text."""
    scorer = RewardScorer(checkpoint)
    prompt = HH.format("tell me a long story about rivers and mountains " * 20)
    responses = [" Short.", " A much longer answer that goes on and on about the rivers " * 3]
    group = scorer.encoder.encode_pair(PreferencePair(prompt, responses[0], responses[1], "t:1"))
    assert group.prompt_truncated
    with torch.no_grad():
        batch = collate([group], scorer.tokenizer.pad_token_id, "prefix_shared")
        training = scorer.model(**batch.model_inputs())
    alone = torch.tensor([s.score for s in scorer.score([prompt, prompt], responses)])
    torch.testing.assert_close(training, alone, atol=1e-5, rtol=0)
    texts = [scorer.encoder.render_text(prompt, r) for r in responses]
    torch.testing.assert_close(torch.tensor(_plain_scores(checkpoint, texts)), alone, atol=1e-5, rtol=0)


def test_model_card_figures_come_from_rlhf_rm_json(tmp_path, tiny_model, tiny_tokenizer):
    from rlhf_rm.checkpoint.model_card import fmt

    metadata = {"base_model": "tiny-llama", "loss": {"name": "bradley_terry"},
                "data": {"train": "train.jsonl", "dev": "dev.jsonl"},
                "data_summary": {"train": {"rows_read": 40, "used": 38, "examples": 38, "quarantined": 1,
                                           "deduplicated": 1, "prompt_truncated": 3, "response_truncated": 0},
                                 "dev": {"rows_read": 16, "used": 16, "examples": 16, "quarantined": 0,
                                         "deduplicated": 0, "prompt_truncated": 0, "response_truncated": 0}},
                "dev_metrics": {"accuracy": 0.6875, "ece": 0.0412, "length_reward_correlation": -0.47,
                                "accuracy_chosen_shorter": 0.8, "accuracy_chosen_longer": 0.45, "reward_mean": 0.12,
                                "length_baseline": 0.5625, "length_baseline_rule": "shorter wins",
                                "margin_over_length_baseline": 0.125},
                "steps": 7, "final": True, "max_length": 128}
    directory = export_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "ckpt", metadata)
    card = (directory / "README.md").read_text()
    stored = json.loads((directory / "rlhf_rm.json").read_text())
    for key, value in stored["dev_metrics"].items():
        assert f"| {fmt(value)} |" in card, key
    for split, counts in stored["data_summary"].items():
        for key in ("rows_read", "used", "quarantined", "prompt_truncated"):
            assert f"| {key} |" in card
    assert "| rows_read | 40 | 16 |" in card and "| max_length | 128 |" in card
    assert "Split: `\"dev.jsonl\"`" in card and "prefer shorter replies" in card
    assert "tok(prompt + response, truncation=True" in card and "parity_certificate.json" in card
