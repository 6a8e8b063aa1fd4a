"""Backbone + scalar head: load, score (last real token found from the attention mask), save as plain HF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

METADATA_FILE = "rlhf_rm.json"


class HeadRewards(NamedTuple):
    """A training forward with the length head (ODIN): the quality head's rewards ([N], or [N, K] for an
    ensemble), the length head's [N], and the cosine between their weight vectors ([K])."""

    quality: torch.Tensor
    length: torch.Tensor
    head_cosine: torch.Tensor


class RewardModel(nn.Module):
    """Wraps an `AutoModelForSequenceClassification(num_labels=1)`; returns one reward per scored token.

    HF's own pooling looks for the first pad id, which is wrong when pad == EOS (SmolLM2, Llama-3);
    here the caller says exactly which (row, column) holds each sequence's last real token.

    `length_head` (training only, losses/length.py): a second bias-free linear head on the same hidden state.
    It lives beside `hf_model`, not in it, so the saved HF model is the quality (`score`) head alone.
    """

    def __init__(self, hf_model: nn.Module, length_head: nn.Linear | None = None):
        super().__init__()
        self.hf_model = hf_model
        self.length_head = length_head

    def forward(self, input_ids, attention_mask, position_ids, score_rows, score_cols,
                segment_ids=None, document_ids=None, with_length: bool = False):
        """attention_mask: [rows, T] or a dense [rows, 1, T, T] tree mask; None with `segment_ids` (flex).
        Returns the quality rewards; `with_length`: a HeadRewards (needs the length head)."""
        # Under LoRA the HF model is wrapped by peft; its layers are adapted in place.
        inner = self.hf_model.get_base_model() if hasattr(self.hf_model, "get_base_model") else self.hf_model
        if segment_ids is not None:  # a model loaded with attention="flex_attention" (see batching/flex_mask.py)
            from rlhf_rm.batching.flex_mask import block_mask

            attention_mask = block_mask(segment_ids, document_ids)
        hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        # The head runs on the N scored positions only, not on every token.
        pooled = hidden[score_rows, score_cols]
        quality = inner.score(pooled).squeeze(-1).float()
        if not with_length:
            return quality
        if self.length_head is None:
            raise ValueError("with_length=True needs a model built with a length head (model.length_head.enabled)")
        # Under LoRA `score` is peft's modules_to_save wrapper; its `.weight` is the trained copy's.
        head_cosine = F.cosine_similarity(inner.score.weight.float(), self.length_head.weight.float(), dim=-1)
        return HeadRewards(quality, self.length_head(pooled).squeeze(-1).float(), head_cosine)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of the last attended token of each row; right or left padding alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).long().argmax(1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift RoPE positions."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from EOS when it has none (or reuses EOS).

    Our pooling never relies on it, but plain `from_pretrained` users of the checkpoint get HF's
    pooling, which stops at the first pad id: with pad == EOS that would score the wrong token.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    unk = tokenizer.unk_token_id
    if unk is not None and unk != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_reward_model(path: str, tokenizer=None, dtype: torch.dtype = torch.float32,
                      head_init_std: float | None = None, ensemble_size: int = 1,
                      attention: str = "sdpa", length_head: bool = False) -> RewardModel:
    """Load a backbone as a reward model with `ensemble_size` scalar heads (1: a plain reward model),
    or a trained checkpoint as it was saved; `length_head`: add ODIN's training-only length head."""
    is_checkpoint = (Path(path) / METADATA_FILE).exists()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A backbone has no score head yet; HF's "newly initialized" report would only alarm users.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        labels = {} if is_checkpoint else {"num_labels": ensemble_size}
        hf_model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, attn_implementation={"flex": "flex_attention"}.get(attention, attention), **labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer is not None:
        if len(tokenizer) > hf_model.get_input_embeddings().num_embeddings:
            hf_model.resize_token_embeddings(len(tokenizer))
        hf_model.config.pad_token_id = tokenizer.pad_token_id
    if head_init_std is not None and not is_checkpoint:
        nn.init.normal_(hf_model.score.weight, std=head_init_std)
    return RewardModel(hf_model, _length_head(hf_model.score, head_init_std) if length_head else None)


def _length_head(score: nn.Linear, init_std: float | None) -> nn.Linear:
    """A fresh bias-free head shaped like one row of `score`: a resumed run restores it from its train state."""
    head = nn.Linear(score.in_features, 1, bias=False, dtype=score.weight.dtype, device=score.weight.device)
    nn.init.normal_(head.weight, std=0.02 if init_std is None else init_std)
    return head


def apply_lora(model: RewardModel, lora_cfg: dict) -> None:
    """Train low-rank adapters instead of the backbone; the score head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_cfg.get("r", 16), lora_alpha=lora_cfg.get("alpha", 32),
                        lora_dropout=lora_cfg.get("dropout", 0.0), target_modules=list(lora_cfg["target_modules"]),
                        modules_to_save=["score"], task_type="SEQ_CLS")
    model.hf_model = get_peft_model(model.hf_model, config)


def merged_for_saving(model: RewardModel) -> RewardModel:
    """A plain HF model to save: LoRA adapters are merged into a copy (training goes on with the original)."""
    if not hasattr(model.hf_model, "merge_and_unload"):
        return model
    import copy

    return RewardModel(copy.deepcopy(model.hf_model).merge_and_unload())  # the length head stays behind


def save_checkpoint(model: RewardModel, tokenizer, directory: str | Path, metadata: dict,
                    state_dict: dict | None = None, certify: bool = True) -> Path:
    """Write a directory that plain `AutoModelForSequenceClassification.from_pretrained` + `AutoTokenizer`
    load and score exactly as training did: the tokenizer is saved with the rendering applied (left
    truncation at max_length, EOS post-processor when the spec appends one), the spec goes into
    rlhf_rm.json, a parity certificate of canary scores is written (certificate.py), and a model card
    (README.md) generated from rlhf_rm.json."""
    import copy

    from rlhf_rm.rendering import RenderingSpec, apply_to_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = RenderingSpec.from_metadata(metadata)
    if spec is None:  # callers that state only the two settings
        spec = RenderingSpec.for_tokenizer(tokenizer, metadata.get("max_length", 2048), metadata.get("append_eos", False))
    metadata = {**metadata, "rendering": spec.to_dict(), "max_length": spec.max_length, "append_eos": spec.append_eos}
    hf_model = model.hf_model
    hf_model.config.problem_type = "regression"
    hf_model.config.pad_token_id = tokenizer.pad_token_id
    if hf_model.config.architectures:
        hf_model.config.architectures = [type(hf_model).__name__]
    if state_dict is not None:
        hf_model.save_pretrained(directory, state_dict=state_dict)
    else:
        hf_model.save_pretrained(directory)
    saved_tokenizer = copy.deepcopy(tokenizer)
    apply_to_tokenizer(saved_tokenizer, spec)
    saved_tokenizer.save_pretrained(directory)
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
    certificate = None
    if certify:
        from rlhf_rm.certificate import issue_certificate

        certificate = issue_certificate(directory)
    from rlhf_rm.model_card import CARD_FILE, render_model_card

    (directory / CARD_FILE).write_text(render_model_card(metadata, certificate,
                                                                 int(hf_model.config.num_labels)))
    return directory


def read_metadata(directory: str | Path) -> dict:
    path = Path(directory) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}
