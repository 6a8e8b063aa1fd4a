"""The driver's progress bar (rlhf_rm/training/progress.py), fed a progress.json by hand: no Ray run."""

from __future__ import annotations

import time


def test_driver_bar_follows_progress_json_and_is_off_without_a_terminal(tmp_path, capsys):
    from rlhf_rm.training.progress import DriverProgress, read_progress, write_progress

    with DriverProgress(tmp_path) as quiet:  # pytest's captured stdout is not a TTY
        write_progress(tmp_path, step=1, total_steps=2, pairs_done=5, total_pairs=10, loss=0.7)
        time.sleep(0.1)
    assert not quiet.enabled and quiet._thread is None
    assert read_progress(tmp_path)["pairs_done"] == 5

    with DriverProgress(tmp_path, interval=0.02, enabled=True) as shown:
        for step in (1, 2):
            write_progress(tmp_path, step=step, total_steps=2, pairs_done=5 * step, total_pairs=10, loss=0.5)
            deadline = time.time() + 5
            while (shown._bar is None or shown._bar.n != 5 * step) and time.time() < deadline:
                time.sleep(0.02)
            assert shown._bar.n == 5 * step
    assert shown._bar.total == 10 and "loss 0.5000" in shown._bar._desc
    assert "\r" not in capsys.readouterr().out  # the bar draws on stderr, the terminal's, never on stdout


def test_format_duration():
    from rlhf_rm.training.progress import format_duration

    assert [format_duration(s) for s in (42, 210, 7560)] == ["42s", "3.5 min", "2.1 h"]
