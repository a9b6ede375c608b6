"""Hyperparameter search for the volume stage with keras-tuner: Bayesian oracle, time-ordered folds.

The folds come from sklearn's TimeSeriesSplit over days sorted by date, so every validation fold
lies after its training fold (keras-tuner's default KFold would shuffle time).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pandas as pd
import xgboost as xgb
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import make_scorer
from sklearn.model_selection import TimeSeriesSplit

from visionzero.model import features as F
from visionzero.model.crash_risk import ModelConfig, Prepared, volume_features
from visionzero.model.deviance import poisson_deviance

if TYPE_CHECKING:
    import keras_tuner as kt

if TYPE_CHECKING:  # keras_tuner loads Keras and jax: imported only where a search runs
    import keras_tuner as kt

log = logging.getLogger(__name__)


class TuningConfig(BaseModel):
    """The hp_tuner's budget (configs/training.yaml `parameters.tuning`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_trials: int = Field(15, ge=1, description="keras-tuner trial budget")
    cv_folds: int = Field(4, ge=2, description="TimeSeriesSplit folds over training days")


def volume_training_frame(
    prepared: Prepared, train_days: pd.DatetimeIndex
) -> tuple[pd.DataFrame, np.ndarray, pd.DatetimeIndex]:
    """Training days in date order with their features and citywide geocoded volume."""
    days = prepared.days[prepared.days["date"].isin(train_days)].sort_values("date")
    weather = prepared.weather[prepared.weather["date"] <= train_days.max()]
    X = volume_features(pd.DatetimeIndex(days["date"]), weather, F.climatology(weather))
    return X, days["volume"].to_numpy(), pd.DatetimeIndex(days["date"])


def build_regressor(hp: kt.HyperParameters, seed: int) -> xgb.XGBRegressor:
    return xgb.XGBRegressor(
        objective="count:poisson",
        random_state=seed,
        n_jobs=2,
        n_estimators=hp.Int("n_estimators", 50, 600, step=50),
        max_depth=hp.Int("max_depth", 2, 6),
        learning_rate=hp.Float("learning_rate", 0.01, 0.3, sampling="log"),
        min_child_weight=hp.Float("min_child_weight", 1.0, 30.0, sampling="log"),
        subsample=hp.Float("subsample", 0.6, 1.0),
        colsample_bytree=hp.Float("colsample_bytree", 0.5, 1.0),
        reg_lambda=hp.Float("reg_lambda", 0.1, 20.0, sampling="log"),
    )


def trial_line(trial_id: str, params: dict, poisson_deviance: float | None) -> str:
    """One log line per trial, in place of keras-tuner's two tables per trial."""
    values = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    score = f"{poisson_deviance:.3f}" if poisson_deviance is not None else "failed"
    return f"trial {trial_id}: CV Poisson deviance {score} | {values}"


def make_tuner(
    cfg: ModelConfig, max_trials: int, n_splits: int, directory: Path
) -> kt.SklearnTuner:
    import keras_tuner as kt

    class OneLineTuner(kt.SklearnTuner):
        """keras-tuner's display off (oracle verbose 0); each finished trial logs one line."""

        def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
            super().on_trial_end(trial)
            done = self.oracle.get_trial(trial.trial_id)
            score = -float(done.score) if done.score is not None else None
            log.info(trial_line(done.trial_id, dict(done.hyperparameters.values), score))

    tuner = OneLineTuner(
        oracle=kt.oracles.BayesianOptimizationOracle(
            objective=kt.Objective("score", "max"), max_trials=max_trials, seed=cfg.seed
        ),
        hypermodel=lambda hp: build_regressor(hp, cfg.seed),
        scoring=make_scorer(poisson_deviance, greater_is_better=False),
        cv=TimeSeriesSplit(n_splits=n_splits),  # never KFold: it would shuffle time
        directory=str(directory),
        project_name="volume",
        overwrite=True,
    )
    tuner.oracle.verbose = 0  # SklearnTuner.run_trial takes no `verbose`: search() cannot pass it
    return tuner


def search(
    prepared: Prepared,
    train_days: pd.DatetimeIndex,
    cfg: ModelConfig,
    tuning: TuningConfig,
    directory: Path,
) -> tuple[dict, list[dict]]:
    """Best parameters and every trial (parameters, mean neg. Poisson deviance over folds)."""
    X, y, _ = volume_training_frame(prepared, train_days)
    tuner = make_tuner(cfg, tuning.max_trials, tuning.cv_folds, directory)
    tuner.search(X.to_numpy(dtype=np.float32), y)
    trials = [
        {
            "trial_id": t.trial_id,
            "params": dict(t.hyperparameters.values),
            "poisson_deviance": -float(t.score) if t.score is not None else None,
        }
        for t in tuner.oracle.trials.values()
    ]
    best = dict(tuner.oracle.get_best_trials(1)[0].hyperparameters.values)
    return best, trials
