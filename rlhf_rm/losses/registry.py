"""Loss registry: conf/loss/<name>.yaml has `name: <name>` plus the loss's own parameters."""

from __future__ import annotations

from typing import Callable

import torch

# A loss takes rewards [groups, K] (column 0 preferred over column 1 for pairs) and returns a scalar.
LossFn = Callable[[torch.Tensor], torch.Tensor]
LOSSES: dict[str, Callable[..., LossFn]] = {}


def register_loss(name: str):
    def decorator(factory):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        LOSSES[name] = factory
        return factory

    return decorator


def build_loss(config) -> LossFn:
    params = dict(config)
    name = params.pop("name")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {sorted(LOSSES)}")
    return LOSSES[name](**params)
