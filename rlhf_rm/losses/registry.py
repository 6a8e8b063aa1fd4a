"""Loss registry: conf/loss/<name>.yaml has `name: <name>` plus the loss's own parameters.

A loss is a callable LossInputs → scalar with two attributes the start-up check reads:
  consumes  the group kinds it learns from: {"pair"} for pairwise losses, {"pair", "ranking"} for
            listwise ones (a pair is a ranking of two), {"pointwise"} for regression on scalar labels;
  requires  labels the data must carry, e.g. {"margin"}.
"""

from __future__ import annotations

from typing import Callable

LOSSES: dict[str, Callable] = {}


class RankingLoss:
    consumes: frozenset = frozenset({"pair"})
    requires: frozenset = frozenset()

    def __call__(self, inputs):  # pragma: no cover - interface
        raise NotImplementedError


def register_loss(name: str):
    def decorator(factory):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        LOSSES[name] = factory
        factory.loss_name = name
        return factory

    return decorator


def build_loss(config) -> RankingLoss:
    params = dict(config)
    name = params.pop("name")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {sorted(LOSSES)}")
    return LOSSES[name](**params)


class LossDataMismatch(ValueError):
    """The configured loss cannot learn from (some of) the configured data."""


def check_loss_fits_data(loss: RankingLoss, kinds: set[str], labels: set[str], data_name: str = "data") -> None:
    """Fail at start-up, not mid-run, when the data lacks what the loss needs."""
    unusable = kinds - set(loss.consumes)
    if "pointwise" in unusable:
        raise LossDataMismatch(
            f"loss {describe(loss)} learns from {sorted(loss.consumes)} but {data_name} has pointwise rows "
            f"(prompt/response/score); use loss=pointwise_mse, or a loss=combo with a pointwise_mse term")
    if unusable and set(loss.consumes) == {"pointwise"}:
        raise LossDataMismatch(
            f"loss {describe(loss)} learns from pointwise rows (prompt/response/score) only but {data_name} has "
            f"{sorted(unusable)}; use a ranking loss for comparisons, or a loss=combo with both")
    if unusable:
        raise LossDataMismatch(
            f"loss {describe(loss)} learns from {sorted(loss.consumes)} but {data_name} also has "
            f"{sorted(unusable)}; use loss=pairwise_all or loss=plackett_luce for rankings, add one to a "
            f"loss=combo, or turn rankings into pairs with as_pairs: adjacent|all on the source")
    missing = set(loss.requires) - labels
    if missing:
        raise LossDataMismatch(f"loss {describe(loss)} needs {sorted(missing)} labels that {data_name} does not "
                               f"provide (set a constant in the loss config instead)")


def describe(loss) -> str:
    return getattr(loss, "name", type(loss).__name__)
