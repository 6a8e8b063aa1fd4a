"""Read and validate preference files into typed examples."""

from rlhf_rm.data.examples import Example, PreferencePair, RankedResponses, ScoredResponse
from rlhf_rm.data.load import DataError, DataReport, load_examples, load_pairs

__all__ = ["DataError", "DataReport", "Example", "PreferencePair", "RankedResponses", "ScoredResponse", "load_examples",
           "load_pairs"]
