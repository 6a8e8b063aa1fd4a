"""Shared fixtures: a tiny random Llama backbone built in code, small real data cut from HH-RLHF."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# The project's shared data sets (../shared/data beside the checkout; CI always has them).
SHARED_DATA = Path(os.environ.get("RLHF_RM_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Token caches written by tests stay out of the user's ~/.cache (Ray workers inherit this too).
os.environ.setdefault("RLHF_RM_CACHE", tempfile.mkdtemp(prefix="rlhf_rm_test_cache_"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def require_shared_data(name: str) -> Path:
    """A shared data set a test needs: missing is a failure, never a silent skip (CI always has them)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(f"shared data set {path} is missing (tests need ../shared/data)", pytrace=False)
    return path


def fixture_texts() -> list[str]:
    texts = []
    for name in ("hh_train_small.jsonl", "hh_dev_small.jsonl"):
        for line in (FIXTURES / name).read_text().splitlines():
            row = json.loads(line)
            texts += [row["chosen"], row["rejected"]]
    return texts


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    from rlhf_rm.tiny import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_llama"), fixture_texts())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_backbone):
    from rlhf_rm.model import load_tokenizer

    return load_tokenizer(tiny_backbone)


@pytest.fixture(scope="session")
def tiny_model(tiny_backbone, tiny_tokenizer):
    import torch

    from rlhf_rm.model import load_reward_model

    torch.manual_seed(0)
    model = load_reward_model(tiny_backbone, tiny_tokenizer, head_init_std=1.0)
    return model.eval()


# -- test tiers: `make test-fast` runs `-m "not slow"` -------------------------------------------------------
@contextlib.contextmanager
def _processes_refused(item):
    """While an unmarked test (and the fixtures it sets up) runs, starting a process raises: every test that
    starts Ray, a server or another process must carry @pytest.mark.slow, or the fast tier would not be fast."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    import multiprocessing.process
    import subprocess

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{item.nodeid} starts a process: mark it @pytest.mark.slow")

    saved = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start
    subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = refuse, refuse
    try:
        yield
    finally:
        subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = saved


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _processes_refused(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _processes_refused(item):
        yield
