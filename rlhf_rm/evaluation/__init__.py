"""Judging a reward model: pair / ranking metrics, diagnostics (length bias, calibration, worst pairs),
RewardBench scoring, and the evaluation report that `python -m rlhf_rm.evaluate` writes."""
