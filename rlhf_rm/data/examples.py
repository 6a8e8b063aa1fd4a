"""Typed preference examples: what every reader produces and every batcher consumes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

# A text is either a plain string or a list of chat messages ({"role", "content"}).
Text = Union[str, list]


@dataclass(frozen=True)
class PreferencePair:
    """One human judgement: `chosen` was preferred over `rejected` as a reply to `prompt`.

    probability: P(chosen ≻ rejected) for soft labels (0.5 = a tie); 1.0 for a plain preference. Readers
        return pairs `oriented()` (p >= 0.5), so "chosen" is always the preferred side.
    margin: how much better chosen is (e.g. a grade difference), for margin losses; None if unknown.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    origin: str  # "file:line" of the row it came from, for error messages and reports
    probability: float = 1.0
    margin: float | None = None
    split_key: str | None = None  # what the train/dev hash split keys on (None: the prompt); see sources.in_split
    subset: str | None = None  # benchmark rows (RewardBench): the subset the row belongs to
    item_id: str | None = None  # benchmark rows: the row's own id (RewardBench 2's Ties pairs "ref:N" with "tied:N")

    def oriented(self) -> "PreferencePair":
        """The same judgement with the preferred response first: P(first ≻ second) < 0.5 means the second
        is preferred, so the pair is swapped and p becomes 1 − p. Every reader and encoder orients pairs,
        so losses, metrics, `evaluate` and `score` read `probability` one way only (0.5 stays a tie)."""
        if self.probability >= 0.5:
            return self
        return replace(self, chosen=self.rejected, rejected=self.chosen, probability=1.0 - self.probability)


@dataclass(frozen=True)
class RankedResponses:
    """K responses to one prompt with human ranks (0 = best; equal ranks are ties)."""

    prompt: Text
    responses: list
    ranks: list
    origin: str
    scores: list | None = None  # human scores behind the ranks (e.g. mean grades), when known
    split_key: str | None = None  # what the train/dev hash split keys on (None: the prompt), e.g. an OASST tree id
    subset: str | None = None  # benchmark rows (RewardBench 2): the subset the row belongs to
    item_id: str | None = None  # benchmark rows: the row's own id


@dataclass(frozen=True)
class ScoredResponse:
    """One response with a scalar human label (a grade, a rating): a pointwise example, for regression losses
    (loss=pointwise_mse). Not a comparison: pair accuracy and the pairwise losses never see it."""

    prompt: Text
    response: Text
    score: float
    origin: str
    split_key: str | None = None  # what the train/dev hash split keys on (None: the prompt)
    subset: str | None = None  # kept for the loader's dedup key, as on the other examples
    item_id: str | None = None


Example = Union[PreferencePair, RankedResponses, ScoredResponse]
