"""The complete save of a reward checkpoint: the model's files, then its parity certificate, then its card.

Training (training/checkpoints.py) and benchmarks call `export_checkpoint`; `model.save_checkpoint` alone
writes only what the model owns (HF weights, the tokenizer with the rendering applied, rlhf_rm.json).
The card is written at save, where TRL's trainer writes its own.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_rm.checkpoint.certificate import issue_certificate
from rlhf_rm.checkpoint.metadata import read_metadata
from rlhf_rm.checkpoint.model_card import CARD_FILE, render_model_card
from rlhf_rm.checkpoint.scorer import RewardScorer
from rlhf_rm.model import save_checkpoint


def export_checkpoint(model, tokenizer, directory: str | Path, metadata: dict, state_dict: dict | None = None,
                      certify: bool = True) -> Path:
    """Write a directory that plain `AutoModelForSequenceClassification` + `AutoTokenizer` load and score
    exactly as training did, certified by canary scores (certificate.py) and described by README.md."""
    directory = save_checkpoint(model, tokenizer, directory, metadata, state_dict=state_dict)
    # The canaries are scored by the files just written, loaded as any scorer loads them.
    certificate = issue_certificate(RewardScorer(str(directory), verify=False), directory) if certify else None
    heads = int(model.hf_model.config.num_labels)  # an ensemble's reward is the mean of its heads: the card says so
    (directory / CARD_FILE).write_text(render_model_card(read_metadata(directory), certificate, heads))
    return directory
