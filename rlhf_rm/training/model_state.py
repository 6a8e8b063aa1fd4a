"""The reward model's interface for training code: build it from settings, name its parameter groups,
gather its full weights under DeepSpeed ZeRO-3.

Everything that knows Hugging Face or DeepSpeed internals (the head's module name, the `hf_model.`
wrapper prefix, DeepSpeed's consolidation call) sits here, next to rlhf_rm/model.py, so the trainer and
the benchmarks only ever call these functions.
"""

from __future__ import annotations

import torch

from rlhf_rm.config import ModelConfig
from rlhf_rm.model import RewardModel, apply_lora, load_reward_model

WRAPPER_PREFIX = "hf_model."  # RewardModel keeps the HF model as `self.hf_model`
HEAD_MODULE = "score"  # AutoModelForSequenceClassification's head; LoRA keeps it fully trainable
LENGTH_HEAD_MODULE = "length_head"  # RewardModel's training-only ODIN head (never saved in the HF model)


def build_reward_model(weights: str, tokenizer, model: ModelConfig, attention: str = "sdpa",
                       gradient_checkpointing: bool = False) -> RewardModel:
    """A backbone (or a checkpoint to resume) as a reward model, with the configured heads and adapters."""
    reward_model = load_reward_model(weights, tokenizer, head_init_std=model.head_init_std,
                                     ensemble_size=model.ensemble_size, attention=attention,
                                     length_head=model.length_head.enabled)
    if model.lora.enabled:
        apply_lora(reward_model, model.lora)
    if gradient_checkpointing:
        reward_model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return reward_model


def set_attention(model: RewardModel, attention: str) -> None:
    """Switch a loaded model's attention kernel: "sdpa" (dense masks) or "flex" (FlexAttention block masks)."""
    model.hf_model.set_attn_implementation({"flex": "flex_attention"}.get(attention, attention))


def is_head_parameter(name: str) -> bool:
    """True for the scalar heads' parameters (also under LoRA's `modules_to_save` copies): `score` and the
    length head, both randomly initialised."""
    return any(f".{module}." in f".{name}" for module in (HEAD_MODULE, LENGTH_HEAD_MODULE))


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters by optimizer treatment: the head, weight-decayed matrices, and the rest
    (biases, norms) without decay. Parameters frozen by LoRA are left out."""
    groups: dict[str, list] = {"head": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_head_parameter(name):
            groups["head"].append(param)
        elif param.ndim < 2 or "norm" in name:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    return groups


def full_state_dict(engine, rank: int) -> dict | None:
    """The full HF weights of a ZeRO-3 model on rank 0 (None elsewhere, and for other stages, whose
    model holds its weights whole). Every rank must call this: gathering the shards is collective."""
    if engine is None or engine.zero_optimization_stage() != 3:
        return None
    full = engine._zero3_consolidated_16bit_state_dict()
    if rank != 0:
        return None
    # Only the HF model's weights: a training-only head beside it is not part of the checkpoint.
    return {key.removeprefix(WRAPPER_PREFIX): value for key, value in full.items() if key.startswith(WRAPPER_PREFIX)}


def adapter_state(model: RewardModel) -> dict | None:
    """The trainable parameters of a LoRA model (adapters + head), unmerged: what a resume must restore,
    since the saved HF weights have the adapters merged in. None without LoRA."""
    if not hasattr(model.hf_model, "merge_and_unload"):
        return None
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def load_adapter_state(model: RewardModel, adapters: dict) -> None:
    """Put saved adapters (adapter_state) back into a freshly built LoRA model of the same shape."""
    params = dict(model.named_parameters())
    missing = sorted(set(adapters) - set(params)) + sorted(n for n, p in params.items()
                                                           if p.requires_grad and n not in adapters)
    if missing:
        raise ValueError(f"the checkpoint's LoRA adapters do not fit this model: {missing[:5]}")
    with torch.no_grad():
        for name, value in adapters.items():
            params[name].copy_(value)


def length_head_state(model: RewardModel) -> dict | None:
    """The length head's weights (None without one): the HF checkpoint leaves it out, a resume needs it."""
    if model.length_head is None:
        return None
    return {name: value.detach().cpu().clone() for name, value in model.length_head.state_dict().items()}


def load_length_head_state(model: RewardModel, state: dict) -> None:
    if model.length_head is None:
        raise ValueError("the checkpoint's train state has a length head but model.length_head.enabled is false")
    model.length_head.load_state_dict(state)
