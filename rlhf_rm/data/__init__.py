"""Read and validate preference files into typed examples."""

from rlhf_rm.data.examples import PreferencePair
from rlhf_rm.data.load import DataError, DataReport, load_pairs

__all__ = ["DataError", "DataReport", "PreferencePair", "load_pairs"]
