"""Render prompts/responses to text and token ids, truncating to the max length without dropping pairs.

Training and serving both go through `ResponseEncoder`, so a (prompt, response) scores the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses, Text


@dataclass
class EncodedGroup:
    """A prompt and K responses to it, as token ids, with what the losses and metrics need.

    A pair has K = 2, chosen first; a ranking has `ranks` (0 = best, equal = tie) in response order.
    """

    prompt_ids: list[int]
    response_ids: list[list[int]]
    prompt_truncated: bool = False
    response_truncated: bool = False
    kind: str = "pair"  # "pair" | "ranking"
    ranks: tuple = (0, 1)
    probability: float = 1.0  # pairs: P(first ≻ second); 0.5 is a tie
    margin: float | None = None
    source: str = ""

    def shared_length(self) -> int:
        """Tokens when the prompt is computed once for all responses."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)

    def separate_length(self) -> int:
        """Tokens when each response is computed with its own copy of the prompt."""
        return len(self.prompt_ids) * len(self.response_ids) + sum(len(r) for r in self.response_ids)


class ResponseEncoder:
    def __init__(self, tokenizer, max_length: int, append_eos: bool = True, min_prompt_tokens: int = 64):
        self.tokenizer = tokenizer
        self.max_length = max_length
        # The scalar is read at the last token; an explicit end-of-text there marks the reply as finished.
        self.append_eos = append_eos
        # When responses alone overflow, keep at least this much of the prompt's end for context.
        self.min_prompt_tokens = min(min_prompt_tokens, max_length // 4)

    # -- rendering ---------------------------------------------------------------------------
    def render(self, prompt: Text, response: Text) -> tuple[str, str]:
        """Return (prompt_text, response_text); chat lists go through the tokenizer's chat template."""
        if isinstance(prompt, str) and isinstance(response, str):
            return prompt, response
        if isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}] if prompt else []
        template = self.tokenizer.apply_chat_template
        prompt_text = template(prompt, tokenize=False, add_generation_prompt=True) if prompt else ""
        full_text = template(list(prompt) + list(response), tokenize=False)
        if not full_text.startswith(prompt_text):
            # Some templates render a generation prompt differently from a finished turn;
            # fall back to the shared prefix so the split point is still exact.
            prompt_text = _common_prefix(prompt_text, full_text)
        return prompt_text, full_text[len(prompt_text):]

    # -- token ids ---------------------------------------------------------------------------
    def encode_group(self, prompt: Text, responses: list[Text]) -> EncodedGroup:
        prompt_text = None
        response_texts = []
        for response in responses:
            p_text, r_text = self.render(prompt, response)
            prompt_text = p_text if prompt_text is None else _common_prefix(prompt_text, p_text)
            response_texts.append(r_text)
        prompt_ids = self.tokenizer(prompt_text, add_special_tokens=True)["input_ids"] if prompt_text else []
        response_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in response_texts]
        eos = self.tokenizer.eos_token_id
        if self.append_eos and eos is not None:
            response_ids = [ids if ids and ids[-1] == eos else ids + [eos] for ids in response_ids]
        return self.truncate(EncodedGroup(prompt_ids, response_ids))

    def encode_pair(self, pair: PreferencePair) -> EncodedGroup:
        return self.encode_example(pair)

    def encode_example(self, example: Example, source: str = "") -> EncodedGroup:
        if isinstance(example, RankedResponses):
            group = self.encode_group(example.prompt, example.responses)
            return replace(group, kind="ranking", ranks=tuple(example.ranks), source=source)
        group = self.encode_group(example.prompt, [example.chosen, example.rejected])
        return replace(group, probability=example.probability, margin=example.margin, source=source)

    def truncate(self, group: EncodedGroup) -> EncodedGroup:
        """Fit every prompt+response into max_length: cut the prompt from the left (keeping its
        latest turns); only if the responses alone do not fit, cut them from the right too."""
        limit = self.max_length
        longest = max(len(r) for r in group.response_ids)
        if len(group.prompt_ids) + longest <= limit:
            return group
        keep_prompt = max(limit - longest, min(self.min_prompt_tokens, len(group.prompt_ids)))
        prompt_ids = group.prompt_ids[len(group.prompt_ids) - keep_prompt:]
        response_limit = limit - keep_prompt
        response_truncated = longest > response_limit
        response_ids = [r[:response_limit] for r in group.response_ids]
        return replace(group, prompt_ids=prompt_ids, response_ids=response_ids,
                       prompt_truncated=keep_prompt < len(group.prompt_ids), response_truncated=response_truncated)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
