"""Rendering and truncation: long pairs lose the start of the prompt, never the pair or the responses."""

from __future__ import annotations

from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.data import PreferencePair


def test_prompt_truncated_from_left_keeps_responses(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=40, min_prompt_tokens=8)
    prompt = " ".join(f"turn{i}" for i in range(200)) + "\n\nAssistant:"
    pair = PreferencePair(prompt, " yes I can help", " no", origin="x:1")
    full = ResponseEncoder(tiny_tokenizer, max_length=10_000).encode_pair(pair)
    group = encoder.encode_pair(pair)
    assert group.prompt_truncated and not group.response_truncated
    assert group.response_ids == full.response_ids  # responses untouched
    assert group.prompt_ids == full.prompt_ids[-len(group.prompt_ids):]  # latest prompt tokens kept
    assert max(len(group.prompt_ids) + len(r) for r in group.response_ids) == 40


def test_overlong_responses_truncated_from_right(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=32, min_prompt_tokens=8)
    pair = PreferencePair("Question:" * 20, " answer" * 100, " short", origin="x:1")
    group = encoder.encode_pair(pair)
    assert group.prompt_truncated and group.response_truncated
    assert len(group.prompt_ids) == 8
    assert all(len(group.prompt_ids) + len(r) <= 32 for r in group.response_ids)


def test_short_pair_untouched_and_eos_appended(tiny_tokenizer):
    group = ResponseEncoder(tiny_tokenizer, max_length=512).encode_pair(PreferencePair("Hi", " a", " b", "x:1"))
    assert not group.prompt_truncated and not group.response_truncated
    assert all(r[-1] == tiny_tokenizer.eos_token_id for r in group.response_ids)


def test_chat_messages_rendered_with_template(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=512)
    prompt_text, response_text = encoder.render([{"role": "user", "content": "Hi"}], "Hello")
    assert prompt_text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert response_text == "Hello<|im_end|>\n"
