"""Render prompts/responses to token ids by the checkpoint's `RenderingSpec`, never dropping a pair.

Training, evaluation and serving all encode through `ResponseEncoder`, and it encodes the way plain
Hugging Face code does (`tok(text, truncation=True)` with the spec applied to the tokenizer), so a text
scores the same in training, in our scorer, and in a peer that loads the checkpoint directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from rlhf_rm.checkpoint.rendering import RenderingSpec, apply_to_tokenizer
from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses, ScoredResponse, Text


@dataclass
class EncodedGroup:
    """A prompt and K responses to it, as token ids, with what the losses and metrics need.

    `prompt_ids` are the tokens every response's full sequence starts with (computed once in the
    prefix-shared layout); response k's sequence is exactly `prompt_ids + response_ids[k]`.
    A pair has K = 2, preferred first; a ranking has `ranks` (0 = best, equal = tie) in response order.
    """

    prompt_ids: list[int]
    response_ids: list[list[int]]
    prompt_truncated: bool = False
    response_truncated: bool = False
    kind: str = "pair"  # "pair" | "ranking" | "pointwise" (one response with a scalar `score`)
    ranks: tuple = (0, 1)
    probability: float = 1.0  # pairs: P(first ≻ second) >= 0.5 (readers orient pairs); 0.5 is a tie
    margin: float | None = None
    score: float | None = None  # pointwise groups: the response's scalar label (ScoredResponse.score)
    source: str = ""
    # Each response's own tokens as a single-text scorer counts them (the text's tokens after its prompt ends,
    # after truncation). Not len(response_ids[k]): where truncation cut a pair's prompt at two places, the
    # shared prefix is shorter than the prompt and response_ids carry prompt tokens too.
    response_lengths: list[int] | None = None

    def lengths(self) -> list[int]:
        """Response lengths for reports and the length head (see `response_lengths`)."""
        return list(self.response_lengths) if self.response_lengths is not None else [len(r) for r in self.response_ids]

    def shared_length(self) -> int:
        """Tokens when the prompt is computed once for all responses."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)

    def separate_length(self) -> int:
        """Tokens when each response is computed with its own copy of the prompt."""
        return len(self.prompt_ids) * len(self.response_ids) + sum(len(r) for r in self.response_ids)


@dataclass
class _Encoded:
    ids: list[int]
    prompt_tokens: int  # leading tokens that belong to the prompt (special tokens included)
    prompt_truncated: bool
    response_truncated: bool


class ResponseEncoder:
    """Encode examples by a `RenderingSpec`. `ResponseEncoder(tok, max_length=512)` builds the spec."""

    def __init__(self, tokenizer, max_length: int | None = None, append_eos: bool = False, *,
                 spec: RenderingSpec | None = None):
        if spec is None:
            if max_length is None:
                raise ValueError("ResponseEncoder needs a RenderingSpec or a max_length")
            spec = RenderingSpec.for_tokenizer(tokenizer, max_length, append_eos)
        self.spec = spec
        # A private copy: the spec changes the tokenizer's truncation and post-processor, and the caller's
        # tokenizer may serve encoders with other specs.
        self.tokenizer = copy.deepcopy(tokenizer)
        apply_to_tokenizer(self.tokenizer, spec)
        self._backend = _truncating_backend(self.tokenizer, spec)

    @property
    def max_length(self) -> int:
        return self.spec.max_length

    @property
    def append_eos(self) -> bool:
        return self.spec.append_eos

    # -- rendering ---------------------------------------------------------------------------
    def render(self, prompt: Text, response: Text) -> tuple[str, int]:
        """(full text, characters of it that belong to the prompt). Strings are concatenated; chat
        message lists (on either side) become one conversation rendered by the chat template."""
        if isinstance(prompt, str) and isinstance(response, str):
            return prompt + response, len(prompt)
        if isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}] if prompt else []
        template = self.tokenizer.apply_chat_template
        full_text = template(list(prompt) + list(response), tokenize=False)
        prompt_text = template(list(prompt), tokenize=False, add_generation_prompt=True) if prompt else ""
        # Templates may render a generation prompt unlike a finished turn: the prompt is the shared part.
        return full_text, _common_prefix_length(prompt_text, full_text)

    def render_text(self, prompt: Text, response: Text) -> str:
        """The exact string a peer should tokenize (plainly) to get this reward."""
        return self.render(prompt, response)[0]

    # -- token ids ---------------------------------------------------------------------------
    def encode_text(self, text: str, prompt_chars: int = 0) -> _Encoded:
        """`tok(text, truncation=True)`, plus where the prompt ends and what truncation removed."""
        if self._backend is not None:
            return self._encode_with_backend(text, prompt_chars)
        tok = self.tokenizer
        offsets_ok = getattr(tok, "is_fast", False)
        full = tok(text, return_offsets_mapping=offsets_ok, verbose=False)  # no "longer than max" warning
        encoded = full
        truncated = len(full["input_ids"]) > self.spec.max_length
        if truncated:
            encoded = tok(text, truncation=True, max_length=self.spec.max_length, return_offsets_mapping=offsets_ok)
        ids = list(encoded["input_ids"])
        if not offsets_ok:
            return _Encoded(ids, 0, truncated, False)
        return _located(ids, encoded["offset_mapping"], prompt_chars, truncated)

    def _encode_with_backend(self, text: str, prompt_chars: int) -> _Encoded:
        """What `tok(text, truncation=True, return_offsets_mapping=True)` returns, tokenized once: the Rust
        call the plain one makes (our backend copy truncates as the plain call sets it to), where learning that
        a text was cut used to cost a second full tokenization. Equality: tests/test_tokenize.py."""
        encoding = self._backend.encode(text)
        return _located(encoding.ids, encoding.offsets, prompt_chars, truncated=bool(encoding.overflowing))

    def encode_group(self, prompt: Text, responses: list[Text]) -> EncodedGroup:
        """Each response's full sequence is encoded on its own (so it equals what a single-text scorer
        sees); the tokens they all start with, up to the end of the prompt, become the shared prefix."""
        encoded = [self.encode_text(*self.render(prompt, response)) for response in responses]
        sequences = [e.ids for e in encoded]
        shared = _common_prefix_length(*sequences) if len(sequences) > 1 else len(sequences[0])
        # The prefix stops at the prompt's end (length reports count response tokens), and each response
        # keeps at least its last token: that is where its reward is read.
        shared = min(shared, min(e.prompt_tokens for e in encoded), min(len(s) for s in sequences) - 1)
        shared = max(shared, 0)
        return EncodedGroup(list(sequences[0][:shared]), [list(s[shared:]) for s in sequences],
                            prompt_truncated=any(e.prompt_truncated for e in encoded),
                            response_truncated=any(e.response_truncated for e in encoded),
                            response_lengths=[max(len(e.ids) - e.prompt_tokens, 1) for e in encoded])

    def encode_pair(self, pair: PreferencePair) -> EncodedGroup:
        return self.encode_example(pair)

    def encode_example(self, example: Example, source: str = "") -> EncodedGroup:
        if isinstance(example, RankedResponses):
            group = self.encode_group(example.prompt, example.responses)
            return replace(group, kind="ranking", ranks=tuple(example.ranks), source=source)
        if isinstance(example, ScoredResponse):
            group = self.encode_group(example.prompt, [example.response])
            return replace(group, kind="pointwise", ranks=(0,), score=example.score, source=source)
        example = example.oriented()  # the preferred response first, whoever built the pair
        group = self.encode_group(example.prompt, [example.chosen, example.rejected])
        return replace(group, probability=example.probability, margin=example.margin, source=source)


def _truncating_backend(tokenizer, spec: RenderingSpec):
    """A copy of a fast tokenizer's Rust backend set the way `tok(text, truncation=True)` sets it for each
    call (left truncation at the spec's length, no padding, its split_special_tokens); None where the plain
    call does more than that Rust call (a slow tokenizer, or a class with its own encode, e.g. CodeLlama's
    <FILL_ME> split), which keeps the plain route."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast) or \
            type(tokenizer)._encode_plus is not PreTrainedTokenizerFast._encode_plus:
        return None
    backend = copy.deepcopy(tokenizer._tokenizer)
    backend.no_padding()
    backend.enable_truncation(spec.max_length, stride=0, strategy="longest_first",
                              direction=tokenizer.truncation_side)
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend


def _located(ids, offsets, prompt_chars: int, truncated: bool) -> _Encoded:
    """Where the prompt's tokens end (by character offsets) and which side truncation cut."""
    ids = list(ids)
    prompt_tokens = 0
    while prompt_tokens < len(ids) and offsets[prompt_tokens][1] <= prompt_chars:
        prompt_tokens += 1
    content_starts = [start for start, end in offsets if end > start]
    response_cut = truncated and bool(content_starts) and content_starts[0] > prompt_chars
    return _Encoded(ids, prompt_tokens, truncated and prompt_chars > 0, response_cut)


def _common_prefix_length(*sequences) -> int:
    """Length of the longest common prefix of strings or lists."""
    if not sequences:
        return 0
    n = 0
    shortest = min(len(s) for s in sequences)
    while n < shortest and all(s[n] == sequences[0][n] for s in sequences[1:]):
        n += 1
    return n
