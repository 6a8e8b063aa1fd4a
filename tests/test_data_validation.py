"""Bad input, row by row: each case stops the run with file:line and what is wrong (on_error=raise) or is
quarantined with its reason and counted (on_error=skip); dedup, dev overlap, the row identity, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES
from rlhf_rm.data import DataError, load_examples, load_pairs
from rlhf_rm.data.load import DataReport

BAD = FIXTURES / "bad"
MIXED = BAD / "mixed.jsonl"

# tests/fixtures/bad/mixed.jsonl, line by line: (line, reason kind, exact reason). Lines not listed are
# good (1, 13, 15, 18), a repeat of line 1 (14) or blank (16).
MIXED_BAD_LINES = [
    (2, "invalid JSON", "invalid JSON: Expecting value at column 48"),
    (3, "not UTF-8", "not valid UTF-8 (invalid start byte at byte 29 of the line)"),
    (4, "missing key", "missing key 'chosen' (did you mean 'choosen'?)"),
    (5, "misspelled key", "unknown key 'probabilty' (did you mean 'probability'?)"),
    (6, "wrong type", "'chosen' must be a string or a list of chat messages, got int"),
    (7, "empty prompt", "'prompt' is empty"),
    (8, "empty prompt", "'prompt' is an empty message list"),
    (9, "empty response", "'chosen' is empty"),
    (10, "identical responses", "chosen and rejected responses are identical"),
    (11, "ranks not a permutation", "'ranks' must be a permutation of 0..2, got [0, 0, 2]"),
    (12, "probability out of range", "'probability' must be a number in [0, 1], got 1.5"),
    (17, "not an object", "expected a JSON object, got list"),
]


def assert_identity(report: DataReport) -> None:
    """No row lost silently: every row read is in exactly one bucket."""
    assert report.rows_read == (report.used + sum(report.quarantined.values()) + report.deduplicated
                                + report.dropped_dev_overlap + report.other_split + report.without_comparison)


def test_mixed_file_skip_quarantines_each_bad_line_exactly(tmp_path):
    quarantine = tmp_path / "q.jsonl"
    pairs, report = load_pairs(MIXED, on_error="skip", quarantine_path=quarantine)
    entries = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(e["origin"], e["kind"], e["reason"]) for e in entries] == \
        [(f"{MIXED}:{line}", kind, reason) for line, kind, reason in MIXED_BAD_LINES]
    assert entries[0]["row"] == '{"prompt": "Q2", "chosen": " yes", "rejected":'  # the raw text is kept
    assert entries[2]["row"] == {"prompt": "Q4", "choosen": " yes", "rejected": " no"}
    assert [p.origin for p in pairs] == [f"{MIXED}:{n}" for n in (1, 13, 15, 18)]
    assert pairs[2].prompt == ""  # implicit prompt without a shared separator is fine
    assert (report.rows_read, report.used, report.deduplicated) == (17, 4, 1)
    assert sum(report.quarantined.values()) == 12
    assert report.quarantined == {"invalid JSON": 1, "not UTF-8": 1, "missing key": 1, "misspelled key": 1,
                                  "wrong type": 1, "empty prompt": 2, "empty response": 1,
                                  "identical responses": 1, "ranks not a permutation": 1,
                                  "probability out of range": 1, "not an object": 1}
    assert_identity(report)
    assert report.unaccounted() == 0


@pytest.mark.parametrize("line,kind,reason", MIXED_BAD_LINES, ids=[k for _, k, _ in MIXED_BAD_LINES])
def test_each_bad_line_raises_with_file_and_line(tmp_path, line, kind, reason):
    rows = MIXED.read_bytes().split(b"\n")
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(rows[0] + b"\n" + rows[line - 1] + b"\n")
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert str(error.value) == f"{path}:2: {reason} (set data.on_error=skip to quarantine bad rows)"


def test_mixed_file_raise_stops_at_first_bad_line():
    with pytest.raises(DataError, match=rf"^{MIXED}:2: invalid JSON"):
        load_pairs(MIXED)


def test_truncated_file_says_it_ends_mid_line(tmp_path):
    path = BAD / "truncated.jsonl"
    with pytest.raises(DataError, match=rf"^{path}:2: the file ends mid-line \(truncated write\?\)"):
        load_pairs(path)
    pairs, report = load_pairs(path, on_error="skip", quarantine_path=tmp_path / "q.jsonl")
    assert len(pairs) == 1 and report.quarantined == {"truncated file": 1} and report.rows_read == 2


def test_complete_last_line_without_newline_is_fine(tmp_path):
    path = tmp_path / "no_newline.jsonl"
    path.write_text('{"prompt": "Q", "chosen": " a", "rejected": " b"}')
    pairs, report = load_pairs(path)
    assert len(pairs) == 1 and report.used == 1


def test_empty_file_raises_or_counts(tmp_path):
    path = BAD / "empty.jsonl"
    with pytest.raises(DataError, match=rf"^{path}: empty file"):
        load_pairs(path)
    quarantine = tmp_path / "q.jsonl"
    pairs, report = load_pairs(path, on_error="skip", quarantine_path=quarantine)
    assert pairs == [] and report.quarantined == {"empty file": 1} and report.rows_read == 1
    assert_identity(report)
    assert json.loads(quarantine.read_text())["origin"] == str(path)


@pytest.mark.parametrize("name,content", [("empty.json", "[]"), ("blank.jsonl", "\n\n")])
def test_other_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match="empty file"):
        load_pairs(path)


def test_parquet_schema_mismatch_is_one_error_naming_file_and_columns(tmp_path):
    path = BAD / "schema_mismatch.parquet"
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert str(error.value).startswith(
        f"{path}: Parquet columns ['prompt', 'choosen', 'rejected'] match no known layout: "
        "expected columns chosen/rejected or responses/ranks or response/score (plus 'prompt') "
        "(did you mean 'choosen' for 'chosen'?)")
    pairs, report = load_pairs(path, on_error="skip", quarantine_path=tmp_path / "q.jsonl")
    assert pairs == [] and report.rows_read == 2 and report.quarantined == {"schema mismatch": 2}
    entries = (tmp_path / "q.jsonl").read_text().splitlines()
    assert len(entries) == 1 and json.loads(entries[0])["rows"] == 2  # one entry for the whole file
    assert_identity(report)


def test_50mb_row_is_rejected_without_parsing(tmp_path, monkeypatch):
    import rlhf_rm.data.readers as readers

    parsed_lengths = []
    real_loads = json.loads
    monkeypatch.setattr(readers.json, "loads", lambda text, *a, **k: parsed_lengths.append(len(text))
                        or real_loads(text, *a, **k))
    good = '{"prompt": "Q", "chosen": " a", "rejected": " b"}\n'
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as handle:
        handle.write(good)
        handle.write('{"prompt": "Q2", "chosen": "' + "x" * (50 * 1024 * 1024) + '", "rejected": " b"}\n')
        handle.write(good.replace('"Q"', '"Q3"'))
    with pytest.raises(DataError, match=rf"^{path}:2: row is 52,428,8\d\d bytes, over data.max_row_bytes=10,485,760"):
        load_pairs(path)
    quarantine = tmp_path / "q.jsonl"
    pairs, report = load_pairs(path, on_error="skip", quarantine_path=quarantine)
    assert [p.origin for p in pairs] == [f"{path}:1", f"{path}:3"]
    assert report.quarantined == {"row too large": 1}
    assert max(parsed_lengths) < 1000  # the big row never reached the JSON parser
    entry = json.loads(quarantine.read_text())
    assert entry["origin"] == f"{path}:2" and len(entry["row"]) <= 201  # a preview, not 50 MB


def test_row_size_limit_in_parquet_and_json(tmp_path):
    big = " " + "y" * 500
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": [" x", big], "rejected": [" z", " w"]}), parquet)
    document = tmp_path / "p.json"
    document.write_text(json.dumps([{"prompt": "a", "chosen": " x", "rejected": " z"},
                                    {"prompt": "b", "chosen": big, "rejected": " w"}]))
    for path in (parquet, document):
        with pytest.raises(DataError, match=rf"{path}:row 2: row is .* over data.max_row_bytes=300"):
            load_pairs(path, max_row_bytes=300)
        pairs, report = load_pairs(path, on_error="skip", quarantine_path=tmp_path / "q.jsonl", max_row_bytes=300)
        assert len(pairs) == 1 and report.quarantined == {"row too large": 1}


def test_json_document_errors_name_the_line(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n{"prompt": "a", "chosen": " x", "rejected": " z"},\n{"prompt": "b", "cho')
    with pytest.raises(DataError, match=rf"^{path}:3: the file ends mid-document \(truncated write\?\)"):
        load_pairs(path)
    path.write_bytes(b'[\n{"prompt": "a", "chosen": " \xff", "rejected": " z"}]')
    with pytest.raises(DataError, match=rf"^{path}:2: not valid UTF-8"):
        load_pairs(path)


def test_extra_columns_are_not_taken_for_misspellings(tmp_path):
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "prompt_id": 7, "chosen": " a", "chosen_score": 9,
                                "rejected": " b", "source": "x"}) + "\n")
    pairs, _ = load_pairs(path)
    assert len(pairs) == 1


# -- deduplication, dev overlap, the row identity across sources ------------------------------
def write_pairs(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p, "chosen": " a", "rejected": " b"}) + "\n" for p in prompts))
    return path


def test_dedup_keeps_first_across_sources_of_a_split(tmp_path):
    first = write_pairs(tmp_path / "one.jsonl", ["A", "B", "A"])
    second = write_pairs(tmp_path / "two.jsonl", ["B", "C"])
    items, report = load_examples([{"path": str(first), "name": "one"}, {"path": str(second), "name": "two"}])
    assert [(name, ex.prompt, ex.origin) for name, ex in items] == \
        [("one", "A", f"{first}:1"), ("one", "B", f"{first}:2"), ("two", "C", f"{second}:2")]
    assert (report.rows_read, report.used, report.deduplicated, report.duplicate_examples) == (5, 3, 2, 2)
    assert_identity(report)
    _, no_dedupe = load_examples([first], dedupe=False)
    assert no_dedupe.used == 3 and no_dedupe.deduplicated == 0


def test_flipped_pair_is_a_duplicate_of_nothing_but_overlaps_dev(tmp_path):
    from rlhf_rm.data.load import content_key

    dev_items, _ = load_examples(write_pairs(tmp_path / "dev.jsonl", ["B"]))
    dev_keys = {content_key(example) for _, example in dev_items}
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in [
        {"prompt": "A", "chosen": " a", "rejected": " b"},
        {"prompt": "B", "chosen": " b", "rejected": " a"},  # the dev pair, flipped: same texts
    ]))
    items, report = load_examples(train, dev_keys=dev_keys)
    assert len(items) == 2 and report.dev_overlap == 1 and report.dropped_dev_overlap == 0
    items, report = load_examples(train, dev_keys=dev_keys, drop_dev_overlap=True)
    assert [ex.prompt for _, ex in items] == ["A"]
    assert (report.dev_overlap, report.dropped_dev_overlap, report.used) == (1, 1, 1)
    assert_identity(report)


def test_identity_with_split_and_converter_rows(tmp_path):
    """Hash-split and multi-example rows (QA-Feedback: up to 6 pairs a row) still add up exactly."""
    rows = []
    for n in range(30):
        preds = {f"prediction {i}": f"answer {n}-{i}" for i in range(1, 5)}
        rows.append({"question": f"question {n}", "preference": [1, 2, 0, 1, 1, 2], **preds})
    rows.append({"question": "same", "preference": [1] * 6, **{f"prediction {i}": "x" for i in range(1, 5)}})
    rows.append({"question": "broken"})
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(rows))
    totals = {}
    for split in ("train", "dev"):
        spec = {"path": str(path), "format": "qa_feedback", "split": split, "dev_fraction": 0.3, "name": "qa"}
        items, report = load_examples([spec], on_error="skip", quarantine_path=tmp_path / f"q_{split}.jsonl")
        assert_identity(report)
        assert report.quarantined == {"missing key": 1} and report.without_comparison == 1
        totals[split] = report
    assert totals["train"].used + totals["dev"].used == 30
    assert totals["train"].other_split == totals["dev"].used


# -- prepare_split: summary, overlap against dev, tokenization cache ---------------------------
def data_cfg(train, dev, **overrides):
    from rlhf_rm.config import DataConfig

    return DataConfig(**{"train": train, "dev": dev, "max_length": 64, "on_error": "skip", **overrides})


def prepare(cfg, encoder, run_dir, split="train"):
    """(groups, summary) of rlhf_rm.prepare.prepare_split's PreparedSplit."""
    from rlhf_rm.prepare import prepare_split

    prepared = prepare_split(cfg, encoder, run_dir, split, seed=0)
    assert prepared.name == split and prepared.count == len(prepared.groups)
    return prepared.groups, prepared.summary


def test_prepare_split_caches_groups_and_summary(tmp_path, monkeypatch, tiny_tokenizer):
    from rlhf_rm.batching.tokenize import ResponseEncoder
    from rlhf_rm.prepare import format_data_summary

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train.jsonl"
    train.write_bytes((FIXTURES / "hh_train_small.jsonl").read_bytes() + MIXED.read_bytes())
    dev = FIXTURES / "hh_dev_small.jsonl"
    cfg = data_cfg(str(train), str(dev))
    encoder = ResponseEncoder(tiny_tokenizer, max_length=64)

    groups, summary = prepare(cfg, encoder, tmp_path / "run1")
    assert summary["cache"]["hit"] is False
    assert summary["rows_read"] == 40 + 17 and summary["used"] == 44 and summary["quarantined"] == 12
    assert summary["deduplicated"] == 1 and summary["groups"] == len(groups) == 44
    assert summary["prompt_truncated"] > 0  # max_length=64 cuts HH prompts, and they are counted
    text = format_data_summary("train", summary)
    assert "57 rows read, 44 used" in text and "12 quarantined, 1 deduplicated" in text
    assert "'empty prompt': 2" in text and "tokenized cache: written" in text

    again, cached = prepare(cfg, encoder, tmp_path / "run2")
    assert cached["cache"]["hit"] is True
    assert again == groups
    strip = lambda s: {k: v for k, v in s.items() if k not in ("cache", "sources")}  # noqa: E731
    assert strip(cached) == strip(summary)
    # The quarantine file is restored into the new run's directory, with the same content.
    [(name, first)] = summary["sources"].items()
    restored = cached["sources"][name]["quarantine_file"]
    assert restored == str(tmp_path / "run2" / f"quarantine_train_{name}.jsonl")
    assert len(Path(restored).read_text().splitlines()) == 12
    assert Path(restored).read_text() == Path(first["quarantine_file"]).read_text()

    # Anything the tokens depend on changes the key: here max_length.
    _, other = prepare(cfg, ResponseEncoder(tiny_tokenizer, max_length=80), tmp_path / "run3")
    assert other["cache"]["hit"] is False
    # And so does the data itself.
    with open(train, "a") as handle:
        handle.write(json.dumps({"prompt": "new", "chosen": " a", "rejected": " b"}) + "\n")
    _, changed = prepare(cfg, encoder, tmp_path / "run4")
    assert changed["cache"]["hit"] is False and changed["used"] == 45


def test_prepare_split_reports_and_drops_dev_overlap(tmp_path, monkeypatch, tiny_tokenizer):
    from rlhf_rm.batching.tokenize import ResponseEncoder
    from rlhf_rm.prepare import format_data_summary

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train.jsonl"
    dev_lines = (FIXTURES / "hh_dev_small.jsonl").read_text().splitlines()
    train.write_text((FIXTURES / "hh_train_small.jsonl").read_text() + "\n".join(dev_lines[:3]) + "\n")
    encoder = ResponseEncoder(tiny_tokenizer, max_length=64)
    for cache in (True, False):
        cfg = data_cfg(str(train), str(FIXTURES / "hh_dev_small.jsonl"), cache=cache)
        groups, summary = prepare(cfg, encoder, tmp_path / "run")
        assert (summary["dev_overlap"], summary["dropped_dev_overlap"], len(groups)) == (3, 0, 43)
        assert "dev overlap: 3 train examples also appear in dev (kept" in format_data_summary("train", summary)
        cfg.drop_dev_overlap = True
        groups, summary = prepare(cfg, encoder, tmp_path / "run")
        assert (summary["dev_overlap"], summary["dropped_dev_overlap"], len(groups)) == (3, 3, 40)
        assert summary["rows_read"] == 43 == summary["used"] + summary["dropped_dev_overlap"]


def test_prepare_split_raise_names_file_and_line(tmp_path, monkeypatch, tiny_tokenizer):
    from rlhf_rm.batching.tokenize import ResponseEncoder
    
    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    cfg = data_cfg(str(MIXED), None, on_error="raise")
    with pytest.raises(DataError, match=rf"{MIXED}:2: invalid JSON"):
        prepare(cfg, ResponseEncoder(tiny_tokenizer, max_length=64), tmp_path)
    assert not list((tmp_path / "cache").glob("**/*.arrow"))  # nothing cached for a failed load


# -- issue 15: data that disappeared silently ----------------------------------------------------
def test_two_sources_in_one_directory_keep_every_row(tmp_path, monkeypatch, tiny_tokenizer):
    """data/x.jsonl + data/y.jsonl both defaulted to the name "data": the summary was keyed by it and the
    groups sliced by the overwritten count (7 rows loaded, 2 reported, 4 trained)."""
    from rlhf_rm.batching.tokenize import ResponseEncoder

    monkeypatch.setenv("RLHF_RM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    x = write_pairs(data / "x.jsonl", ["A", "B", "C"])
    y = write_pairs(data / "y.jsonl", ["D", "E", "F", "G"])
    encoder = ResponseEncoder(tiny_tokenizer, max_length=64)
    for cache in (False, True):
        groups, summary = prepare(data_cfg([str(x), str(y)], None, cache=cache), encoder, tmp_path / "run")
        assert len(groups) == summary["groups"] == 7
        assert summary["rows_read"] == summary["used"] == 7
        assert sorted(report["rows_read"] for report in summary["sources"].values()) == [3, 4]
        assert len({g.source for g in groups}) == 2


def test_two_sources_with_the_same_explicit_name_are_a_config_error():
    from rlhf_rm.prepare.split import source_specs

    with pytest.raises(ValueError, match="same name 'one'"):
        source_specs([{"path": "a.jsonl", "name": "one"}, {"path": "b.jsonl", "name": "one"}])


def test_row_accounting_check_survives_python_O(tmp_path, monkeypatch):
    """The check was an `assert`, which `python -O` removes; now it is an error in any mode."""
    monkeypatch.setattr(DataReport, "unaccounted", lambda self: 1)
    with pytest.raises(DataError, match="row accounting is off by 1"):
        load_examples([MIXED], on_error="skip", quarantine_path=tmp_path / "q.jsonl")


def test_utf8_bom_at_the_start_of_jsonl_and_json_loads(tmp_path):
    """Windows exports start with a byte-order mark; it was rejected as invalid JSON."""
    row = {"prompt": "p", "chosen": " a", "rejected": " b"}
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode() * 2)
    document = tmp_path / "bom.json"
    document.write_bytes(b"\xef\xbb\xbf" + json.dumps([row]).encode())
    for path, rows in ((jsonl, 2), (document, 1)):
        pairs, report = load_pairs(path, dedupe=False)
        assert report.used == report.rows_read == rows and pairs[0].prompt == "p"


def test_unknown_chat_role_is_an_error_naming_file_line_and_role(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    bad_prompt = {**good, "prompt": [{"role": "usr", "content": "hi"}]}
    path.write_text("\n".join(json.dumps(r) for r in (good, bad_prompt)) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: .*unknown chat role 'usr'"):
        load_pairs(path)
    not_assistant = {**good, "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "c"}]}
    path.write_text(json.dumps(not_assistant) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: .*'chosen'.*last message.*'user'.*not 'assistant'"):
        load_pairs(path)
    ranking = {"prompt": "p", "responses": [[{"role": "bot", "content": "a"}], "b"], "ranks": [0, 1]}
    path.write_text(json.dumps(ranking) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: .*unknown chat role 'bot'"):
        load_pairs(path)


def test_oasst_dev_split_holds_out_whole_trees():
    """Rankings of one message tree have different prompts (each conversation prefix), so a prompt hash put
    parts of a tree on both sides; the split keys on the tree id, so every tree is all train or all dev."""
    from conftest import require_shared_data

    path = require_shared_data("oasst-ranked") / "en_100_tree.jsonl"
    trees = {}
    for split in ("train", "dev"):
        spec = {"path": str(path), "format": "oasst_trees", "split": split, "dev_fraction": 0.2, "name": "oasst"}
        items, report = load_examples([spec])
        assert_identity(report)
        trees[split] = {example.origin.split(" message ")[0] for _, example in items}  # "path:line" = one tree
    assert trees["train"] and trees["dev"]
    assert not trees["train"] & trees["dev"], sorted(trees["train"] & trees["dev"])
    rankings = load_examples([{"path": str(path), "format": "oasst_trees", "name": "oasst"}])[0]
    assert len(trees["train"] | trees["dev"]) == len({e.origin.split(" message ")[0] for _, e in rankings})


def test_oasst_tree_without_an_id_names_its_line(tmp_path):
    tree = {"prompt": {"text": "Hi", "role": "prompter", "replies": [
        {"text": "Hello", "role": "assistant", "rank": 0}, {"text": "Hey", "role": "assistant", "rank": 1}]}}
    path = tmp_path / "trees.jsonl"
    path.write_text(json.dumps(tree) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl:1: message tree without an id"):
        load_examples([{"path": str(path), "format": "oasst_trees", "split": "train"}])
