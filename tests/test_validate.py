"""`python -m rlhf_rm.validate`: training's data accounting before a cluster job (in-process, no Ray, no model)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES, require_shared_data

BAD = FIXTURES / "bad"


def validate(capsys, *argv) -> tuple[int, str]:
    from rlhf_rm.validate import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().out


def test_clean_file_exits_zero_with_the_training_accounting(capsys, tiny_backbone):
    status, out = validate(capsys, FIXTURES / "hh_train_small.jsonl", "--model", tiny_backbone, "--max-length", 64)
    assert status == 0, out
    assert "data[train]: 40 rows read, 40 used → 40 examples → 40 groups; 0 quarantined" in out
    assert "data.max_length=64" in out
    # truncation is counted with the given tokenizer and length, as training would
    truncated = int(out.split("truncated: ")[1].split(" prompts")[0])
    assert truncated > 0
    assert "OK: 40 examples would train" in out


def test_bad_rows_exit_nonzero_naming_file_and_line(capsys, tiny_backbone):
    status, out = validate(capsys, BAD / "mixed.jsonl", BAD / "truncated.jsonl", "--model", tiny_backbone)
    assert status == 1
    assert f"{BAD / 'mixed.jsonl'}:2: invalid JSON" in out
    assert f"{BAD / 'mixed.jsonl'}:4: missing key 'chosen'" in out
    assert "FAIL:" in out and "would stop training" in out
    assert "quarantined by reason" in out


def test_on_error_skip_writes_the_quarantine_and_exits_zero(capsys, tmp_path, tiny_backbone):
    status, out = validate(capsys, BAD / "mixed.jsonl", "--model", tiny_backbone, "--on-error", "skip",
                           "--quarantine", tmp_path)
    assert status == 0, out
    quarantine = tmp_path / "quarantine_train_mixed.jsonl"
    rows = [json.loads(line) for line in quarantine.read_text().splitlines()]
    quarantined = int(out.split("used → ")[1].split("; ")[1].split(" quarantined")[0])
    assert len(rows) == quarantined > 0
    assert rows[0]["origin"] == f"{BAD / 'mixed.jsonl'}:2"
    assert str(quarantine) in out and "would be quarantined" in out


def test_directory_and_glob_inputs(capsys, tmp_path, tiny_backbone):
    """A directory (every file in it, Parquet and empty files included) and a glob over two formats."""
    status, out = validate(capsys, BAD, "--model", tiny_backbone, "data.on_error=skip")
    assert status == 0, out
    assert "schema mismatch" in out and "empty file" in out

    rows = [json.loads(line) for line in (FIXTURES / "hh_dev_small.jsonl").read_text().splitlines()]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.slice(0, 8), tmp_path / "a.parquet")
    feather.write_feather(table.slice(8), tmp_path / "b.arrow")
    status, out = validate(capsys, f"{tmp_path}/*.*", "--model", tiny_backbone)
    assert status == 0, out
    assert "16 rows read, 16 used" in out


@pytest.mark.parametrize("fmt, path", [("oasst_trees", "oasst-ranked/en_100_tree.jsonl"),
                                       ("qa_feedback", "qa-feedback/dev_feedback.json"),
                                       ("conala_grades", "conala-grades/conala-human-grades.json")])
def test_every_source_format(capsys, tiny_backbone, fmt, path):
    status, out = validate(capsys, require_shared_data(path), "--format", fmt, "--model", tiny_backbone, "data.limit=5")
    assert status == 0, out
    assert "data[train]: 5 rows read" in out


def test_unknown_data_option_is_refused(tiny_backbone):
    from omegaconf.errors import ConfigKeyError

    from rlhf_rm.validate import main

    with pytest.raises(ConfigKeyError):
        main([str(FIXTURES / "hh_dev_small.jsonl"), "--model", tiny_backbone, "data.max_lenght=3"])


def test_dev_split_and_train_dev_overlap(capsys, tiny_backbone):
    train = FIXTURES / "hh_train_small.jsonl"
    status, out = validate(capsys, train, "--dev", train, "--model", tiny_backbone)
    assert status == 0, out
    assert "data[dev]: 40 rows read" in out
    assert "dev overlap: 40 train examples also appear in dev (kept; data.drop_dev_overlap=true removes them)" in out
