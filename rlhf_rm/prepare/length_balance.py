"""Length-balanced training pairs (data.length_balance): the train split's pairs, within each bin of length
difference, hold as many "chosen longer" as "chosen shorter" pairs.

On HH-RLHF harmless the chosen reply is the shorter one in most pairs whose replies differ a lot in length and
the longer one in most near-equal pairs; a reward trained on that learns length. Balancing per bin of
|len(chosen) − len(rejected)| (Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations in
RLHF", arXiv:2310.03716: length balancing) leaves no bin in which length predicts the label:
  downsample  keep a seeded subset of the majority direction of each bin (the paper's intervention; fewer pairs)
  upsample    repeat seeded minority-direction pairs until each bin is even (every pair is kept but those of a
              bin with no pair of the other direction, which no repeat can even out). A repeat has its pair's
              length, and steps group similar lengths, so copies mostly share a step: in effect a larger loss
              weight on those pairs, not extra independent steps.
Lengths are response tokens as a single-text scorer counts them (EncodedGroup.lengths). Pairs of equal length,
ties and rankings are kept as they are. Nothing is dropped silently: the counts go into the split's summary.
"""

from __future__ import annotations

import random
from collections import defaultdict

from rlhf_rm.config import LENGTH_BALANCE_MODES as MODES


def balance_by_length(groups: list, mode: str, bin_tokens: int, seed: int) -> tuple[list, dict | None]:
    """(balanced groups in their original order, with upsampled repeats appended; the report, None for mode none)."""
    if mode not in MODES:
        raise ValueError(f"data.length_balance.mode={mode!r}; choose one of {MODES}")
    if mode == "none":
        return groups, None
    if bin_tokens < 1:
        raise ValueError(f"data.length_balance.bin_tokens must be >= 1, got {bin_tokens}")
    bins: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))  # bin → (shorter, longer)
    for index, group in enumerate(groups):
        direction = _direction(group)
        if direction is not None:
            bins[direction[1] // bin_tokens][direction[0]].append(index)
    rng = random.Random(seed)
    dropped, repeats, without_minority = set(), [], 0
    for key in sorted(bins):
        few, many = sorted(bins[key], key=len)
        if mode == "upsample" and few:
            whole, remainder = divmod(len(many) - len(few), len(few))
            repeats += few * whole + rng.sample(few, remainder)
        else:  # downsample; or a bin with no pair of the other direction, which repeats cannot even out
            without_minority += not few
            dropped.update(rng.sample(many, len(many) - len(few)))
    balanced = [g for i, g in enumerate(groups) if i not in dropped] + [groups[i] for i in repeats]
    report = {
        "mode": mode, "bin_tokens": bin_tokens,
        "chosen_longer": sum(len(longer) for _, longer in bins.values()),
        "chosen_shorter": sum(len(shorter) for shorter, _ in bins.values()),
        "dropped": len(dropped), "repeated": len(repeats), "groups": len(balanced),
        "bins_without_minority": without_minority if mode == "upsample" else 0,
    }
    return balanced, report


def _direction(group) -> tuple[int, int] | None:
    """(1 if the chosen reply is longer else 0, |length difference|) of a strict pair; None otherwise."""
    if group.kind != "pair" or group.probability == 0.5:
        return None
    chosen, rejected = group.lengths()
    if chosen == rejected:
        return None
    return int(chosen > rejected), abs(chosen - rejected)


def format_length_balance(report: dict) -> str:
    """The start-up line of a balanced split."""
    action = (f"{report['dropped']} majority-direction pairs dropped" if report["mode"] == "downsample" else
              f"{report['repeated']} minority-direction pairs repeated")
    line = (f"  length balance ({report['mode']}, bins of {report['bin_tokens']} tokens): "
            f"{report['chosen_longer']} chosen longer / {report['chosen_shorter']} chosen shorter → {action}")
    if report["bins_without_minority"]:
        line += (f"; {report['dropped']} pairs dropped from {report['bins_without_minority']} bins with no pair of "
                 f"the other direction")
    return line + f"; {report['groups']} groups"
