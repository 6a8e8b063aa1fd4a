"""Rendering and truncation: one rule (keep each text's last max_length tokens), the one plain HF applies."""

from __future__ import annotations

import pytest

from rlhf_rm.batching.tokenize import ResponseEncoder
from rlhf_rm.data import PreferencePair
from rlhf_rm.checkpoint.rendering import RenderingSpec


def _sequences(group):
    return [group.prompt_ids + r for r in group.response_ids]


def test_long_pair_keeps_each_texts_last_tokens(tiny_tokenizer):
    """Each response keeps the last max_length tokens of its own full text: what a single-text scorer and a
    plain `tok(text, truncation=True)` with truncation_side="left" see."""
    encoder = ResponseEncoder(tiny_tokenizer, max_length=40)
    prompt = " ".join(f"turn{i}" for i in range(200)) + "\n\nAssistant:"
    pair = PreferencePair(prompt, " yes I can help you with that", " no", origin="x:1")
    group = encoder.encode_pair(pair)
    assert group.prompt_truncated and not group.response_truncated
    for sequence, response in zip(_sequences(group), (pair.chosen, pair.rejected)):
        full = tiny_tokenizer(prompt + response)["input_ids"]
        assert sequence == full[-40:]
    # Responses of different lengths cut the prompt at different places: nothing of it can be shared
    # (an exact prefix only), and each response is still whole.
    assert group.response_ids[1][-len(tiny_tokenizer(" no")["input_ids"]):] == tiny_tokenizer(" no")["input_ids"]


def test_overlong_response_keeps_its_end(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=32)
    pair = PreferencePair("Question:" * 20, " answer" * 100 + " the end", " short", origin="x:1")
    group = encoder.encode_pair(pair)
    assert group.prompt_truncated and group.response_truncated
    assert all(len(s) == 32 for s in _sequences(group)[:1])
    end = tiny_tokenizer(" the end", add_special_tokens=False)["input_ids"]
    assert _sequences(group)[0][-len(end):] == end  # the reward's token (the text's end) survives


def test_short_pair_untouched_no_eos_by_default(tiny_tokenizer):
    group = ResponseEncoder(tiny_tokenizer, max_length=512).encode_pair(PreferencePair("Hi", " a", " b", "x:1"))
    assert not group.prompt_truncated and not group.response_truncated
    assert _sequences(group)[0] == tiny_tokenizer("Hi a")["input_ids"]
    assert all(r[-1] != tiny_tokenizer.eos_token_id for r in group.response_ids)


def test_append_eos_is_the_tokenizers_own_post_processing(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=16, append_eos=True)
    group = encoder.encode_pair(PreferencePair("Hi" * 30, " a", " b", "x:1"))
    eos = tiny_tokenizer.eos_token_id
    assert all(s[-1] == eos and len(s) == 16 for s in _sequences(group))
    # The encoder's copy carries the rule, the caller's tokenizer is left alone.
    assert encoder.tokenizer("Hi")["input_ids"][-1] == eos
    assert tiny_tokenizer("Hi")["input_ids"][-1] != eos


def test_shared_prefix_stops_at_the_prompt(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=512)
    group = encoder.encode_pair(PreferencePair("\n\nHuman: hi\n\nAssistant:", " I think yes", " I think no", "x:1"))
    assert group.prompt_ids == tiny_tokenizer("\n\nHuman: hi\n\nAssistant:")["input_ids"]
    assert all(s == tiny_tokenizer("\n\nHuman: hi\n\nAssistant:" + r)["input_ids"]
               for s, r in zip(_sequences(group), (" I think yes", " I think no")))


def test_chat_messages_rendered_with_template(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=512)
    text, prompt_chars = encoder.render([{"role": "user", "content": "Hi"}], "Hello")
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    assert text[:prompt_chars] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_probability_below_half_is_the_reversed_pair(tiny_tokenizer):
    encoder = ResponseEncoder(tiny_tokenizer, max_length=512)
    flipped = encoder.encode_pair(PreferencePair("Q", " a", " b", "x:1", probability=0.2, margin=1.5))
    straight = encoder.encode_pair(PreferencePair("Q", " b", " a", "x:1", probability=0.8, margin=1.5))
    assert flipped == straight
    assert flipped.probability == pytest.approx(0.8)


def test_spec_round_trip_and_refuses_other_truncation_rules(tiny_tokenizer):
    spec = RenderingSpec.for_tokenizer(tiny_tokenizer, 128, append_eos=True)
    assert RenderingSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="truncation"):
        RenderingSpec(truncation="keep_first")
    with pytest.raises(ValueError, match="unknown rendering keys"):
        RenderingSpec.from_dict({**spec.to_dict(), "min_prompt_tokens": 8})


def _variant(tokenizer, kind: str):
    """A copy of the tiny tokenizer (byte-level BPE, adds no special token) that post-processes like another
    family: Llama's BOS, RoBERTa's <s>..</s> with trimmed offsets, GPT-2/NeoX's ByteLevel(trim_offsets), or
    one loaded with split_special_tokens=True."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    bos, eos = (tok.bos_token, tok.bos_token_id), (tok.eos_token, tok.eos_token_id)
    if kind == "bos":
        tok._tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A $B:1",
                                                                      special_tokens=[bos])
    elif kind == "roberta":
        tok._tokenizer.post_processor = processors.RobertaProcessing(eos, bos, trim_offsets=True)
    elif kind == "bytelevel-trim":
        tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    elif kind == "split-special":
        tok.split_special_tokens = True
    return tok


@pytest.mark.parametrize("kind", ["plain", "bos", "roberta", "bytelevel-trim", "split-special"])
@pytest.mark.parametrize("append_eos", [False, True], ids=["no-eos", "eos"])
def test_single_tokenization_equals_the_plain_truncating_call(tiny_tokenizer, kind, append_eos):
    """The encoder tokenizes each text once through the Rust backend; ids, the prompt/response boundary and
    the truncation flags must equal the plain `tok(text, truncation=True)` route (two calls for a long text)."""
    from conftest import fixture_texts

    tokenizer = _variant(tiny_tokenizer, kind)
    import random

    words = random.Random(0).choices(["I", " a", " help", " am", " .", " ?", "  ", "\n", " can", " you"], k=600)
    short = ["".join(words[i:i + 12]) for i in range(0, 600, 12)]  # single-character tokens, spaces: trimmed offsets
    texts = fixture_texts()[:20] + short + [f"{tokenizer.bos_token}user\nhi{tokenizer.eos_token} I"]
    for max_length in (10, 40, 512):
        fast = ResponseEncoder(tokenizer, max_length=max_length, append_eos=append_eos)
        plain = ResponseEncoder(tokenizer, max_length=max_length, append_eos=append_eos)
        plain._backend = None  # the two-call route through the tokenizer's __call__
        assert fast._backend is not None
        cut = 0
        for text in texts:
            for prompt_chars in sorted({0, 1, 2, 3, 5, len(text) // 3, len(text) - 5, len(text) - 2}):
                got, want = fast.encode_text(text, prompt_chars), plain.encode_text(text, prompt_chars)
                assert got == want, (max_length, text[:60], prompt_chars)
            plain_call = fast.tokenizer(text, truncation=True, return_offsets_mapping=True)
            assert got.ids == plain_call["input_ids"]
            cut += len(fast.tokenizer(text)["input_ids"]) > max_length
        assert max_length == 512 or cut > 0  # the truncating branch ran
        chat = [{"role": "user", "content": texts[0]}]
        assert fast.encode_group(chat, [texts[1], texts[2]]) == plain.encode_group(chat, [texts[1], texts[2]])


def test_response_lengths_are_each_texts_own_tokens_when_truncation_cuts_the_prompt_at_two_places(tiny_tokenizer):
    """A pair whose long prompt is cut at different places for its two responses shares no prefix, so
    response_ids hold prompt tokens too. The length split of every report and the length head must count each
    response's own tokens, as `rlhf_rm.evaluate` does scoring each text alone."""
    from rlhf_rm.batching.arrow import groups_to_table, table_to_groups
    from rlhf_rm.batching.collate import collate
    from rlhf_rm.evaluation.metrics import hard_pairs

    encoder = ResponseEncoder(tiny_tokenizer, max_length=40)
    prompt = " ".join(f"turn{i}" for i in range(200)) + "\n\nAssistant:"
    pair = PreferencePair(prompt, " no", " yes I can help you with that, here is how", origin="x:1")
    group = encoder.encode_pair(pair)
    alone = [encoder.encode_group(prompt, [response]).response_ids[0] for response in (pair.chosen, pair.rejected)]
    assert [len(r) for r in group.response_ids] != [len(a) for a in alone]  # the case this test is about
    assert group.lengths() == [len(a) for a in alone]
    assert group.lengths()[0] < group.lengths()[1]  # the chosen reply is the shorter one
    pairs = hard_pairs([group], [[1.0, 0.0]])
    assert (pairs.chosen_lengths, pairs.rejected_lengths) == ([len(alone[0])], [len(alone[1])])
    assert collate([group], tiny_tokenizer.pad_token_id).response_lengths.tolist() == group.lengths()
    assert table_to_groups(groups_to_table([group]))[0].lengths() == group.lengths()  # survives the token cache
    # The dev report's worst-pairs table shows each reply as scored alone, not with the prompt tokens it carries.
    from rlhf_rm.training.dev_report import worst_pair_row

    shown = worst_pair_row({"id": 0, "margin": 1.0, "chosen": 1.0, "rejected": 0.0}, group, tiny_tokenizer)
    assert shown[-2:] == [tiny_tokenizer.decode(a) for a in alone]
    assert shown[-3].endswith("Assistant:")  # and the prompt column ends where the prompt ends
