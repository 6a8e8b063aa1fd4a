"""RewardBench v1/v2 rows: reading (formats, rendering, bad rows), the official scoring rules on hand-computed
cases, and the `rewardbench` block of `python -m rlhf_rm.evaluate` (run in tests/test_evaluate.py)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import FIXTURES
from rlhf_rm.data import load_pairs
from rlhf_rm.data.load import DataError
from rlhf_rm.data.rewardbench import detect_format
from rlhf_rm.evaluation.rewardbench import BenchmarkItem, best_of_n, rewardbench_report, ties_score, v1_sections

V1, V2 = FIXTURES / "rewardbench_v1.jsonl", FIXTURES / "rewardbench_v2.jsonl"


def test_best_of_n_follows_reward_bench():
    """One chosen: credit 1 when it alone scores highest, 1/k when k scores share the top, else 0.
    Several chosen: 1 only when the worst chosen beats the best rejected."""
    assert best_of_n([2.0], [1.0, 0.5, 1.9]) == 1.0
    assert best_of_n([2.0], [2.0, 1.0, 2.0]) == pytest.approx(1 / 3)
    assert best_of_n([1.0], [2.0, 0.0]) == 0.0
    assert best_of_n([3.0, 2.0], [1.0, 1.5]) == 1.0
    assert best_of_n([3.0, 2.0], [1.0, 2.5]) == 0.0


def test_ties_score_by_hand():
    """Prompt 0: ref chosen 2 vs rejected {1, 0} (right, margin 1); tied chosen {3, 2.5} vs 1 (right, spread 0.5,
    margin 1.5): both margin terms hold, tanh(min(1, 1.5)/0.5 − 1) = tanh(1).
    Prompt 1: ref 0 vs 1 (wrong, margin −1); tied {2, 0} vs 1 (wrong, spread 2, margin −1): tanh(−1.5).
    score = 0.3·0.5 + 0.3·0.5 + 0.2·0.5 + 0.2·0.5 + 0.01·(tanh 1 + tanh −1.5)/2."""
    items = [BenchmarkItem("Ties", "ref:0", [2.0], [1.0, 0.0]), BenchmarkItem("Ties", "tied:0", [3.0, 2.5], [1.0]),
             BenchmarkItem("Ties", "ref:1", [0.0], [1.0]), BenchmarkItem("Ties", "tied:1", [2.0, 0.0], [1.0])]
    result = ties_score(items)
    assert result["ref_accuracy"] == result["tied_accuracy"] == 0.5
    assert result["correctness_preferred"] == result["correctness_preferred_hard"] == 0.5
    margin = (math.tanh(1.0) + math.tanh(-1.5)) / 2
    assert result["correctness_margin_score"] == pytest.approx(margin)
    assert result["score"] == pytest.approx(0.5 + 0.01 * margin)
    assert ties_score(items[:1])["score"] is None  # no prompt with both a ref and a tied row


def test_v1_sections_weight_subsets_by_official_counts():
    """Chat: alpacaeval-easy 1.0 (100 rows) and mt-bench-easy 0.0 (28) → 100/128. Reasoning: math-prm 0.5 (984)
    and hep-python 1.0 (164) → (492 + 164)/1148."""
    sections = v1_sections({"alpacaeval-easy": 1.0, "mt-bench-easy": 0.0, "math-prm": 0.5, "hep-python": 1.0})
    assert sections == {"Chat": pytest.approx(100 / 128), "Reasoning": pytest.approx(656 / 1148)}


def test_report_per_subset_and_overall():
    v1 = rewardbench_report([BenchmarkItem("alpacaeval-easy", "1", [1.0], [0.0]),
                             BenchmarkItem("alpacaeval-easy", "2", [0.0], [0.0]),  # a tie is wrong in v1
                             BenchmarkItem("refusals-dangerous", "3", [0.0], [1.0]),
                             BenchmarkItem("my-subset", "4", [1.0], [0.0])], version=1)
    assert v1["subsets"]["alpacaeval-easy"] == {"rows": 2, "score": 0.5}
    assert v1["sections"] == {"Chat": 0.5, "Safety": 0.0} and v1["mean_of_sections"] == 0.25
    assert v1["unmapped_subsets"] == ["my-subset"]
    v2 = rewardbench_report([BenchmarkItem("Focus", "1", [2.0], [1.0, 2.0, 0.0]),
                             BenchmarkItem("Focus", "2", [3.0], [1.0, 2.0, 0.0]),
                             BenchmarkItem("Math", "3", [0.0], [1.0, 2.0, 0.0])], version=2)
    assert v2["subsets"]["Focus"]["score"] == 0.75 and v2["subsets"]["Math"]["score"] == 0.0
    assert v2["mean_of_subsets"] == 0.375


def test_formats_are_detected_by_their_keys():
    assert detect_format(V1) == "rewardbench" and detect_format(V2) == "rewardbench2"
    assert detect_format(FIXTURES / "hh_dev_small.jsonl") is None


def test_rows_become_tagged_examples_in_either_prompt_style():
    pairs, report = load_pairs([{"path": str(V1), "format": "rewardbench", "prompt_style": "plain"}])
    assert report.used == 6 and report.chat_examples == 0
    assert pairs[0].prompt == "\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert pairs[0].chosen == " The capital of France is Paris." and pairs[0].subset == "alpacaeval-easy"
    rows, report = load_pairs([{"path": str(V2), "format": "rewardbench2"}])  # chat by default
    assert report.chat_examples == 5
    tied = rows[-1]
    assert tied.prompt == [{"role": "user", "content": "Name a primary color."}]
    assert tied.ranks == [0, 0, 0, 1, 1] and tied.subset == "Ties" and tied.item_id == "tied:0"
    assert tied.responses[0] == [{"role": "assistant", "content": "Red."}]


@pytest.mark.parametrize("fmt,row,message", [
    ("rewardbench", {"prompt": "p", "chosen": "a", "rejected": "b"}, "missing key 'subset'"),
    ("rewardbench", {"prompt": "p", "chosen": ["a"], "rejected": "b", "subset": "s"}, "'chosen' must be a string"),
    ("rewardbench2", {"prompt": "p", "chosen": ["a"], "rejected": [], "subset": "s"}, "non-empty list"),
    ("rewardbench2", {"prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "s", "num_correct": 2},
     "'num_correct' is 2"),
    ("rewardbench2", {"prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Ties", "id": "7"},
     "Ties row needs an id"),
])
def test_bad_rows_name_file_and_line_or_are_quarantined(tmp_path, fmt, row, message):
    path = tmp_path / "bench.jsonl"
    good = {"prompt": "p", "chosen": "a" if fmt == "rewardbench" else ["a"],
            "rejected": "b" if fmt == "rewardbench" else ["b"], "subset": "s"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"bench.jsonl:2: .*{message}"):
        load_pairs([{"path": str(path), "format": fmt}])
    examples, report = load_pairs([{"path": str(path), "format": fmt}], on_error="skip",
                                  quarantine_path=tmp_path / "q.jsonl")
    assert len(examples) == 1 and report.as_dict()["quarantined"] == 1
    assert json.loads((tmp_path / "q.jsonl").read_text())["origin"].endswith("bench.jsonl:2")


def test_prompt_style_follows_the_checkpoint():
    from rlhf_rm.checkpoint.metadata import CheckpointMetadata
    from rlhf_rm.evaluation.dev_data import checkpoint_prompt_style

    def style(values: dict, requested: str) -> str:
        return checkpoint_prompt_style(CheckpointMetadata.from_dict(values), requested)[0]

    summary = {"data_summary": {"train": {"examples": 10, "chat_examples": 7}}}
    assert style(summary, "auto") == "chat"
    plain = {"data_summary": {"train": {"examples": 10, "chat_examples": 0}}}
    assert style(plain, "auto") == "plain"
    assert style(summary, "plain") == "plain"
    older = {"config": {"data": {"train": [{"path": "t.jsonl", "format": "oasst_trees"}]}}}
    assert style(older, "auto") == "chat"
    assert style({"config": {"data": {"train": "hh.jsonl"}}}, "auto") == "plain"
    with pytest.raises(ValueError, match="prompt_style='html'"):
        style(summary, "html")
