"""Run progress: rank 0 writes progress.json each step; the driver turns it into one bar for the whole run.

Workers print no progress bars (Ray would relay every worker's redraws, several times each); rank 0 prints
one plain `step k/T` line per logged step, which reads the same in a terminal, in CI and in `ray job logs`.
Only when the driver's stdout and stderr are a terminal does a driver thread poll progress.json and draw a
single bar (pairs done, pairs/s, ETA, latest loss) through Ray's tqdm manager, which hides it while worker
lines print.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

PROGRESS_FILE = "progress.json"


def write_progress(run_dir: str, **position) -> None:
    """Atomically replace run_dir/progress.json (step, total_steps, pairs_done, total_pairs, loss, ...)."""
    path = Path(run_dir) / PROGRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)  # rank 0 may sit on another node than the driver
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**position, "pid": os.getpid()}))
    tmp.replace(path)


def read_progress(run_dir: str | Path) -> dict | None:
    """The latest position, or None before the first step (or while the file is being replaced)."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class DriverProgress:
    """`with DriverProgress(run_dir): trainer.fit()` — one bar on an interactive driver, nothing otherwise.

    Polls progress.json every `interval` seconds; the file sits in the run directory, so the bar shows on
    a single machine (or a shared file system) and is simply absent when rank 0 writes it elsewhere.
    """

    def __init__(self, run_dir: str | Path, interval: float = 0.5, enabled: bool | None = None):
        self.run_dir, self.interval = Path(run_dir), interval
        # The bar draws on stderr; any redirection (CI, a pipe, `ray job logs`) means plain lines only.
        self.enabled = sys.stdout.isatty() and sys.stderr.isatty() if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None

    def __enter__(self) -> "DriverProgress":
        if self.enabled:
            (self.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a previous attempt's position is stale
            self._thread = threading.Thread(target=self._poll, name="rlhf_rm-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            position = read_progress(self.run_dir)
            if position and position.get("total_pairs"):
                self.show(position)

    def show(self, position: dict) -> None:
        """Move the bar to `position` (created on the first call)."""
        from ray.experimental.tqdm_ray import tqdm

        if self._bar is None:
            self._bar = tqdm(total=position["total_pairs"], desc="train", unit="pair", flush_interval_s=self.interval)
        loss = position.get("loss")
        self._bar.n = position["pairs_done"]  # no redraw yet: set_description draws both at once
        self._bar.set_description(f"train step {position['step']}/{position['total_steps']}"
                                  + (f" loss {loss:.4f}" if loss is not None else ""))

def print_line(line: str) -> None:
    """Print one line from a worker, once. Ray Train patches `print` in its workers to log through the
    root logger *and* tee to a wrapped stdout, which shows every printed line twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    """ETA for a step line: 42s, 3.5 min, 2.1 h."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"
