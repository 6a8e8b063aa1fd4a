"""What a checkpoint directory holds and how it is written and read.

    rendering.py    RenderingSpec: the one rendering (template, EOS, max length, truncation) every scorer reads
    metadata.py     rlhf_rm.json as one typed CheckpointMetadata (read by scoring, serving, evaluation, the card)
    certificate.py  parity canaries scored at save, re-scored at every load
    model_card.py   the checkpoint's README.md, generated from the metadata only
    export.py       the complete save: HF files + tokenizer + metadata, then certificate, then model card

Nothing here imports training, data preparation or serving: those import this room.
"""
