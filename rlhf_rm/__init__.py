"""rlhf_rm: train a reward model on human preferences with Ray, serve it as a scalar scorer."""

__version__ = "0.1.0"
