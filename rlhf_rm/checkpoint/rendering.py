"""The one rendering of a (prompt, response) into the tokens a reward is read from.

A `RenderingSpec` is decided once from the training config, written into every checkpoint
(`rlhf_rm.json` → "rendering") and read back by every scorer; nothing else states a length or an EOS rule.
The rule is the one plain Hugging Face code applies, so a peer that loads the directory scores the same tokens:

  text        a string prompt + response is concatenated as is; chat message lists go through the
              tokenizer's chat template (the whole conversation, as `apply_chat_template(messages)` gives it);
  tokens      `tok(text, truncation=True)`: the tokenizer's own special tokens, plus EOS when `append_eos`
              (installed as the saved tokenizer's post-processor, so plain `tok(text)` appends it too);
  truncation  one rule for training and scoring alike: keep the last `max_length` tokens of each text
              (the saved tokenizer has `truncation_side="left"` and `model_max_length=max_length`);
  reward      read at the last token.

Default: nothing appended (`append_eos: false`). Peers disagree on EOS: TRL's GRPO reward path tokenizes
with `add_special_tokens=False`, vLLM/SGLang and plain `tok(text)` with the defaults; a reward read at the
last token of the plain text is the one position all of them agree on. Chat data still ends with the
template's own end-of-turn marker.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

TRUNCATION_RULE = "keep_last"  # the only rule: a plain tokenizer can reproduce it with truncation_side="left"


@dataclass(frozen=True)
class RenderingSpec:
    max_length: int = 512  # tokens per text (prompt + response + special tokens)
    append_eos: bool = False  # True: every text ends with EOS (post-processor in the saved tokenizer)
    truncation: str = TRUNCATION_RULE
    chat_template_sha256: str | None = None  # which template rendered chat messages (None: none set)
    eos_token: str | None = None
    pad_token: str | None = None

    def __post_init__(self):
        if self.truncation != TRUNCATION_RULE:
            raise ValueError(f"rendering.truncation={self.truncation!r}: only {TRUNCATION_RULE!r} is supported")
        if int(self.max_length) < 8:
            raise ValueError(f"rendering.max_length={self.max_length} is too small (at least 8 tokens)")

    @classmethod
    def for_tokenizer(cls, tokenizer, max_length: int, append_eos: bool = False) -> "RenderingSpec":
        """The spec of a training run: settings from the config, token facts from the tokenizer."""
        return cls(max_length=int(max_length), append_eos=bool(append_eos),
                   chat_template_sha256=template_digest(tokenizer), eos_token=tokenizer.eos_token,
                   pad_token=tokenizer.pad_token)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RenderingSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown rendering keys {sorted(unknown)} (written by a newer rlhf_rm?)")
        return cls(**values)

    def differences(self, other: "RenderingSpec") -> list[str]:
        """Human-readable 'field: a != b' lines, for refusal messages."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]


def template_digest(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if isinstance(template, dict):  # several named templates
        template = repr(sorted(template.items()))
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def apply_to_tokenizer(tokenizer, spec: RenderingSpec) -> None:
    """Make plain `tokenizer(text, truncation=True)` produce the spec's tokens (and keep them on save):
    left truncation to max_length, and EOS appended by the post-processor when the spec says so."""
    tokenizer.model_max_length = spec.max_length
    tokenizer.truncation_side = "left"
    # save_pretrained writes init_kwargs; an attribute set after loading is not always among them.
    tokenizer.init_kwargs.update(model_max_length=spec.max_length, truncation_side="left")
    if spec.append_eos:
        _append_eos_post_processor(tokenizer)


def _append_eos_post_processor(tokenizer) -> None:
    backend = getattr(tokenizer, "_tokenizer", None)
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if backend is None or eos_id is None:
        raise ValueError(f"rendering.append_eos=true needs a fast tokenizer with an EOS token "
                         f"({type(tokenizer).__name__}, eos={eos!r})")
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    if probe and probe[-1] == eos_id:
        return  # the tokenizer appends EOS already
    from tokenizers import processors

    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    prefix = probe[: len(probe) - len(bare)] if probe[len(probe) - len(bare):] == bare else []
    head = [tokenizer.convert_ids_to_tokens(i) for i in prefix]  # e.g. a BOS the tokenizer adds itself
    specials = {token: tokenizer.convert_tokens_to_ids(token) for token in [*head, eos]}
    single = " ".join([*head, "$A", eos])
    pair = " ".join([*head, "$A", eos, "$B:1", f"{eos}:1"])
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=list(specials.items()))
