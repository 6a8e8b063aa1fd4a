"""The prefix-shared tree mask as a FlexAttention BlockMask (GPU).

collate() gives SDPA a dense [rows, 1, T, T] boolean mask, which forces its slower masked kernel and
costs T² memory per row. FlexAttention instead takes the rule itself (mask_mod) and skips every
128×128 block the rule masks out; the rule only needs each token's segment: 0 for the prompt, k + 1
for response k, -1 for padding.
"""

from __future__ import annotations

import torch


def tree_mask_mod(segments: torch.Tensor):
    """mask_mod(b, h, q, kv) of the tree mask in collate._collate_prefix_shared: the prompt is causal;
    a response sees the whole prompt and itself causally, never a sibling; a pad token sees itself."""

    def mask_mod(b, h, q, kv):
        query, key = segments[b, q], segments[b, kv]
        tree = (kv <= q) & (query >= 0) & (key >= 0) & ((key == 0) | (key == query))
        return tree | (q == kv)

    return mask_mod


def block_mask(segments: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = segments.shape
    return create_block_mask(tree_mask_mod(segments), rows, None, width, width, device=segments.device)
