"""Tokenization, truncation, prefix sharing and length-aware batching → model-ready tensors."""
