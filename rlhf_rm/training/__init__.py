"""Training on one Ray Train worker: the shared steps (steps.py), where each step's data comes from
(sources.py), resumable checkpoints (checkpoints.py), dev-evaluation bookkeeping (dev_report.py)."""
