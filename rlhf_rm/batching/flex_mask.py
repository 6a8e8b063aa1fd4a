"""The prefix-shared tree mask as a FlexAttention BlockMask (GPU).

collate() gives SDPA a dense [rows, 1, T, T] boolean mask, which forces its slower masked kernel and
costs T² memory per row. FlexAttention instead takes the rule itself (mask_mod) and skips every
128×128 block the rule masks out; the rule only needs each token's segment (0 for the prompt, k + 1
for response k, -1 for padding) and, in packed rows, its document (which group or response of the row).
"""

from __future__ import annotations

import torch


def tree_mask_mod(segments: torch.Tensor, documents: torch.Tensor | None = None):
    """mask_mod(b, h, q, kv) of the tree mask in collate._collate_units: within a document the prompt is
    causal; a response sees the whole prompt and itself causally, never a sibling; nothing crosses
    documents; a pad token sees itself."""
    if documents is None:
        documents = torch.zeros_like(segments)

    def mask_mod(b, h, q, kv):
        query, key = segments[b, q], segments[b, kv]
        same = documents[b, q] == documents[b, kv]
        tree = (kv <= q) & (query >= 0) & (key >= 0) & ((key == 0) | (key == query)) & same
        return tree | (q == kv)

    return mask_mod


def block_mask(segments: torch.Tensor, documents: torch.Tensor | None = None):
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = segments.shape
    return create_block_mask(tree_mask_mod(segments, documents), rows, None, width, width, device=segments.device)
