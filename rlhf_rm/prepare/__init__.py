"""Data preparation: files → validated, deduplicated, encoded (cached, optionally streamed) splits for training.

The layer between `rlhf_rm.data` (read + validate) and training; it hands the trainer one PreparedSplit
per split (groups or shards, accounting summary, quarantine files).
"""

from rlhf_rm.prepare.split import PreparedSplit, build_encoder, prepare_split, prepare_splits, prepare_streamed_train
from rlhf_rm.prepare.summary import SUMMARY_COUNTS, format_data_summary

__all__ = ["SUMMARY_COUNTS", "PreparedSplit", "build_encoder", "format_data_summary", "prepare_split",
           "prepare_splits", "prepare_streamed_train"]
