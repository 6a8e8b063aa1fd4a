"""Each distinct (prompt, response) scored once, and the dev pairs and RewardBench rows read from that table."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhf_rm.data.examples import RankedResponses
from rlhf_rm.evaluation.rewardbench import BenchmarkItem


@dataclass
class ScoredPairs:
    """Per-pair scores and response token lengths (after truncation: what the model saw)."""

    origins: list[str]
    sources: list[str]
    chosen: list[float]
    rejected: list[float]
    chosen_lengths: list[int]
    rejected_lengths: list[int]
    truncated: int
    prompts: list[str]
    chosen_texts: list[str]
    rejected_texts: list[str]


class TextScores:
    """Every distinct (prompt, response) scored once: a RewardBench 2 row's responses appear in several of its
    pairs, and a benchmark's best-of-N and our pair report must read the same numbers."""

    def __init__(self, scorer, texts):
        self.index: dict[str, int] = {}
        unique = []
        for prompt, response in texts:
            key = _text_key(prompt, response)
            if key not in self.index:
                self.index[key] = len(unique)
                unique.append((prompt, response))
        encoded = [scorer.encode(prompt, response) for prompt, response in unique]
        self.scores = scorer.score_encoded(encoded) if encoded else []
        self.lengths = [e.lengths()[0] for e in encoded]
        self.truncated = [e.prompt_truncated or e.response_truncated for e in encoded]

    def position(self, prompt, response) -> int:
        return self.index[_text_key(prompt, response)]


def _text_key(prompt, response) -> str:
    return json.dumps([prompt, response], ensure_ascii=False)


def score_pairs(table: TextScores, pairs, sources: list[str]) -> ScoredPairs:
    chosen = [table.position(p.prompt, p.chosen) for p in pairs]
    rejected = [table.position(p.prompt, p.rejected) for p in pairs]
    return ScoredPairs(
        origins=[p.origin for p in pairs],
        sources=list(sources),
        chosen=[table.scores[i] for i in chosen], rejected=[table.scores[i] for i in rejected],
        chosen_lengths=[table.lengths[i] for i in chosen],
        rejected_lengths=[table.lengths[i] for i in rejected],
        truncated=sum(table.truncated[i] for i in chosen + rejected),
        prompts=[_plain(p.prompt) for p in pairs],
        chosen_texts=[_plain(p.chosen) for p in pairs],
        rejected_texts=[_plain(p.rejected) for p in pairs],
    )


def benchmark_items(table: TextScores, examples) -> list[BenchmarkItem]:
    """RewardBench rows (v1 pairs, v2 rankings with chosen at rank 0) with their responses' scores."""
    items = []
    for example in examples:
        if isinstance(example, RankedResponses):
            scores = [table.scores[table.position(example.prompt, r)] for r in example.responses]
            chosen = [s for s, rank in zip(scores, example.ranks) if rank == 0]
            rejected = [s for s, rank in zip(scores, example.ranks) if rank != 0]
        else:
            chosen = [table.scores[table.position(example.prompt, example.chosen)]]
            rejected = [table.scores[table.position(example.prompt, example.rejected)]]
        items.append(BenchmarkItem(example.subset, example.item_id, chosen, rejected))
    return items


def _plain(text) -> str:
    """Chat-message lists flattened to "role: content" lines, for the report only."""
    if isinstance(text, str):
        return text
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in text)
