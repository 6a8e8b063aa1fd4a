"""Data formats and malformed rows: every bad row is reported with its file and line, or quarantined."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES, SHARED_DATA, require_shared_data
from rlhf_rm.data import DataError, load_pairs


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_explicit_string_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": " good", "rejected": " bad"}])
    pairs, report = load_pairs(path)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("Q?", " good", " bad")
    assert pairs[0].origin == f"{path}:1"
    assert report.rows_read == 1 and report.used == 1


def test_implicit_prompt_hh_split():
    pairs, report = load_pairs(FIXTURES / "hh_train_small.jsonl")
    assert report.used == report.rows_read == 40
    for pair in pairs:
        assert pair.prompt.endswith("\n\nAssistant:")
        # The prompt is the *longest* shared prefix ending in the separator: past it, the two responses
        # share no further separator (the check before this one could not fail: chosen != rejected always).
        assert "\n\nAssistant:" not in os.path.commonprefix([pair.chosen, pair.rejected])
    first = json.loads((FIXTURES / "hh_train_small.jsonl").read_text().splitlines()[0])
    assert pairs[0].prompt + pairs[0].chosen == first["chosen"]
    assert pairs[0].prompt + pairs[0].rejected == first["rejected"]


def test_implicit_prompt_without_separator_keeps_whole_texts(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "abc", "rejected": "abd"}])
    pairs, _ = load_pairs(path)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("", "abc", "abd")


def test_chat_message_rows(tmp_path):
    user = {"role": "user", "content": "Hi"}
    rows = [
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        # TRL's implicit-prompt conversational form: shared leading messages are the prompt.
        {"chosen": [user, {"role": "assistant", "content": "Hello!"}],
         "rejected": [user, {"role": "assistant", "content": "Go away."}]},
        {"prompt": [user], "chosen": "Hello!", "rejected": "Go away."},
    ]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "chat.jsonl", rows))
    for pair in pairs:
        assert pair.prompt == [user]
        assert pair.chosen == [{"role": "assistant", "content": "Hello!"}]


def test_parquet_rows(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": [" x", " y"], "rejected": [" z", " w"]}), path)
    pairs, report = load_pairs(path)
    assert [p.chosen for p in pairs] == [" x", " y"]
    assert pairs[1].origin == f"{path}:row 2"


BAD_ROWS = [
    ('{"chosen": "a", "rejected": ', "invalid JSON"),
    ({"chosen": "a"}, "missing key 'rejected'"),
    ({"chosen": "  ", "rejected": "b"}, "'chosen' is empty"),
    ({"chosen": 3, "rejected": "b"}, "'chosen' must be a string or a list of chat messages, got int"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical"),
    ([1, 2], "expected a JSON object"),
]


@pytest.mark.parametrize("bad_row,message", BAD_ROWS)
def test_malformed_row_names_file_and_line(tmp_path, bad_row, message):
    good = {"prompt": "p", "chosen": " a", "rejected": " b"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, bad_row, good])
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert f"{path}:3:" in str(error.value)
    assert message in str(error.value)


def test_non_utf8_line_names_line(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"chosen": "a", "rejected": "b"}\n{"chosen": "\xff\xfe", "rejected": "b"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid UTF-8"):
        load_pairs(path)


def test_skip_quarantines_and_counts(tmp_path):
    good = {"prompt": "p", "chosen": " a", "rejected": " b"}
    rows = [good] + [row for row, _ in BAD_ROWS] + [{**good, "prompt": "q"}]  # distinct: repeats are deduplicated
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    quarantine = tmp_path / "q.jsonl"
    pairs, report = load_pairs(path, on_error="skip", quarantine_path=quarantine)
    assert len(pairs) == report.used == 2
    assert report.rows_read == len(rows)
    assert sum(report.quarantined.values()) == len(BAD_ROWS)
    assert report.rows_read == report.used + sum(report.quarantined.values())  # nothing lost silently
    entries = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [e["origin"] for e in entries] == [f"{path}:{n}" for n in range(2, 2 + len(BAD_ROWS))]
    for entry, (_, message) in zip(entries, BAD_ROWS):
        assert message in entry["reason"]


def test_limit_reads_first_rows():
    pairs, report = load_pairs(FIXTURES / "hh_train_small.jsonl", limit=5)
    assert len(pairs) == 5 and report.rows_read == 5


def test_shipped_hh_rlhf_loads_completely():
    require_shared_data("hh-rlhf-harmless")
    pairs, report = load_pairs(SHARED_DATA / "hh-rlhf-harmless" / "dev.jsonl")
    assert report.used == report.rows_read == 208
