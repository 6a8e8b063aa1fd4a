"""W&B tracking without W&B: what a dev evaluation hands the run, with and without logger.log_texts."""

from __future__ import annotations

import pytest

from conftest import FIXTURES


class RecordingRun:
    """Stands in for a wandb run: keeps what was logged."""

    def __init__(self):
        self.logged: list[dict] = []

    def log(self, values: dict, step=None) -> None:
        self.logged.append(values)


@pytest.fixture(scope="module")
def dev_groups(tiny_tokenizer):
    from rlhf_rm.config import DataConfig
    from rlhf_rm.data import load_pairs
    from rlhf_rm.prepare import build_encoder

    encoder = build_encoder(tiny_tokenizer, DataConfig(train=None))
    pairs, _ = load_pairs(FIXTURES / "hh_dev_small.jsonl")
    return pairs, [encoder.encode_example(pair) for pair in pairs]


@pytest.mark.parametrize("log_texts", [True, False])
def test_log_texts_false_sends_no_decoded_text_to_wandb(tmp_path, tiny_tokenizer, dev_groups, log_texts):
    from rlhf_rm.config import LoggerConfig
    from rlhf_rm.training.tracking import SCORE_COLUMNS, TEXT_COLUMNS, RunTracker
    from rlhf_rm.training.dev_report import record_diagnostics

    pairs, groups = dev_groups
    tracker = RunTracker(LoggerConfig(backend="none", log_texts=log_texts), str(tmp_path), {})
    tracker.run = RecordingRun()
    scores = [[0.1 * (i % 3), 0.2 * (i % 5)] for i in range(len(groups))]  # some pairs scored the wrong way
    record_diagnostics(groups, scores, str(tmp_path), tracker, step=3, tokenizer=tiny_tokenizer)

    (logged,) = tracker.run.logged
    table = logged["dev/worst_pairs"]
    assert table.columns == SCORE_COLUMNS + (TEXT_COLUMNS if log_texts else [])
    assert len(table.data) > 0
    cells = [cell for row in table.data for cell in row]
    texts = [cell for cell in cells if isinstance(cell, str)]
    if log_texts:
        assert len(texts) == 3 * len(table.data)  # prompt end, chosen, rejected
    else:
        assert texts == []
        # and nothing else logged carries a prompt or a response either
        logged_text = repr({k: v for k, v in logged.items() if k != "dev/worst_pairs"})
        assert not any(p.chosen.strip()[:40] in logged_text or p.prompt.strip()[:40] in logged_text for p in pairs)


def test_logger_config_declares_log_texts_default_true():
    from rlhf_rm.config import compose, settings_from

    assert settings_from(compose(["data.train=x.jsonl"])).logger.log_texts is True
    assert settings_from(compose(["data.train=x.jsonl", "logger.log_texts=false"])).logger.log_texts is False
