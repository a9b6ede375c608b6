"""Rolling-origin backtest over the complete-day windows.

A model is judged as a recipe (its volume parameters and configuration): at each origin the recipe
is fit on the complete days before the origin only and scored on the window that starts there, so
no origin learns from its own future. The latest origin is the holdout.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pydantic import Field, ValidationError

from visionzero.evaluation.metrics import BootstrapConfig
from visionzero.model.config import ModelConfig
from visionzero.model.crash_risk import CrashRiskModel, Prepared, train


class EvaluationConfig(BootstrapConfig):
    """The backtest and its intervals (configs/training.yaml `parameters.evaluation`)."""

    backtest_origins: int = Field(
        4, ge=1, description="origins: the holdout and the latest earlier complete-day windows"
    )
    min_window_days: int = Field(
        30, ge=7, description="a run of complete days this long can be a backtest window"
    )
    min_train_days: int = Field(
        120, ge=30, description="complete days an origin needs before it to train on"
    )
    window_gap_days: int = Field(
        7, ge=1, description="complete days further apart than this start a new window"
    )


@dataclass(frozen=True)
class Origin:
    """Train on `train_days` (all complete days before the origin), score on `test_days`."""

    train_days: pd.DatetimeIndex
    test_days: pd.DatetimeIndex


def backtest_origins(
    train_days: pd.DatetimeIndex, holdout_days: pd.DatetimeIndex, cfg: EvaluationConfig
) -> list[Origin]:
    """Oldest first, the holdout last. Earlier origins start the latest runs of complete days
    (inside the training period) that are long enough and have enough history before them."""
    ordered = pd.DatetimeIndex(sorted(train_days))
    run_id = (ordered.to_series().diff().dt.days > cfg.window_gap_days).cumsum().to_numpy()
    earlier: list[Origin] = []
    for run in sorted(set(run_id), reverse=True):
        if len(earlier) == cfg.backtest_origins - 1:
            break
        window = ordered[run_id == run]
        before = ordered[ordered < window.min()]
        if len(window) >= cfg.min_window_days and len(before) >= cfg.min_train_days:
            earlier.append(Origin(train_days=before, test_days=window))
    return [*reversed(earlier), Origin(train_days=ordered, test_days=holdout_days)]


# ModelConfig fields added after models were first saved, and the value that reproduces a model
# saved before them. Any other missing field means the recipe cannot be rebuilt.
ABSENT_MEANS = {"child_neighbour_weight": 0.0}


class NoRecipe(ValueError):
    """A saved model whose training recipe (configuration and volume parameters) cannot be
    rebuilt, so it cannot be refit and compared."""


def recipe_config(model: CrashRiskModel) -> ModelConfig:
    """The configuration a model was trained with, never today's defaults in place of what it
    did not record (keys of retired fields are ignored)."""
    saved = model.meta.get("config")
    if saved is None or "params" not in model.meta:
        raise NoRecipe("it recorded no configuration and volume parameters")
    missing = [k for k in ModelConfig.model_fields if k not in saved and k not in ABSENT_MEANS]
    if missing:
        raise NoRecipe(f"its recorded configuration lacks {', '.join(missing)}")
    known = {k: v for k, v in saved.items() if k in ModelConfig.model_fields}
    try:
        return ModelConfig.model_validate({**ABSENT_MEANS, **known})
    except ValidationError as exc:
        first = exc.errors()[0]
        field, why = first["loc"][0], first["msg"]
        raise NoRecipe(f"its recorded {field} is no longer valid: {why}") from exc


def refit(model: CrashRiskModel, prepared: Prepared, days: pd.DatetimeIndex) -> CrashRiskModel:
    """The model's recipe fit on other days: how a backtest origin and the evaluator's
    production comparison see a model without its own training days' luck or leakage."""
    return train(
        prepared, days, model.meta["params"], recipe_config(model), model.meta.get("data_version")
    )


def not_comparable(candidate: CrashRiskModel, production: CrashRiskModel) -> str | None:
    """Why production's recipe cannot be scored on the candidate's zones and blocks, if so."""
    try:
        theirs = recipe_config(production)
    except NoRecipe as exc:
        return f"production's recipe cannot be refit ({exc}): not comparable"
    mine = recipe_config(candidate)
    keys = ("resolution", "block_hours", "finest_resolution")
    if all(getattr(mine, key) == getattr(theirs, key) for key in keys):
        return None
    shape = "res {resolution}..{finest_resolution}/{block_hours}h"
    return (
        f"production has grain {shape.format(**theirs.model_dump())}, "
        f"candidate {shape.format(**mine.model_dump())}: not comparable"
    )
