"""Hyperparameter searches with keras-tuner, Bayesian oracles and time-ordered folds, one per stage.

Volume: XGBoost parameters (SklearnTuner), scored by Poisson deviance of the citywide daily count.
Shares: the shrinkage strengths and half-lives of the share hierarchy (ModelConfig fields, the
table SHARE_SPACE; a generic keras-tuner Tuner whose run_trial returns the scores), scored by
Poisson deviance at the finest resolution with each validation day's observed citywide volume, so
the volume model adds no noise to the share stage's score.

The folds come from sklearn's TimeSeriesSplit over days sorted by date, so every validation fold
lies after its training fold (keras-tuner's default KFold would shuffle time).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pandas as pd
import xgboost as xgb
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import make_scorer
from sklearn.model_selection import TimeSeriesSplit

from visionzero.model import features as F
from visionzero.model.config import ModelConfig
from visionzero.model.crash_risk import Prepared, volume_features
from visionzero.model.deviance import poisson_deviance
from visionzero.model.scoring import DenseGrid
from visionzero.model.shares import ShareTable, ZoneTable, fit_children

if TYPE_CHECKING:  # keras_tuner loads Keras and jax: imported only where a search runs
    import keras_tuner as kt

log = logging.getLogger(__name__)


class TuningConfig(BaseModel):
    """The hp_tuner's budget (configs/training.yaml `parameters.tuning`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_trials: int = Field(15, ge=1, description="keras-tuner trial budget of the volume model")
    share_trials: int = Field(
        12, ge=1, description="keras-tuner trial budget of the share hierarchy (1st: as configured)"
    )
    cv_folds: int = Field(4, ge=2, description="TimeSeriesSplit folds over training days")


class TunedParams(BaseModel):
    """hp_tuner's output: XGBoost parameters of the volume stage and the share hierarchy's
    ModelConfig fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    volume: dict[str, int | float]
    shares: dict[str, float]

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """cfg with the tuned share fields, validated like a configured ModelConfig."""
        return ModelConfig.model_validate({**cfg.model_dump(), **self.shares})


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


def trial_line(
    trial_id: str,
    params: dict,
    poisson_deviance: float | None,
    *,
    stage: str = "",
    score_format: str = ".3f",
    hit_rate_at_10: float | None = None,
) -> str:
    """One log line per trial, in place of keras-tuner's two tables per trial."""
    values = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    score = f"{poisson_deviance:{score_format}}" if poisson_deviance is not None else "failed"
    hit = f", hit@10% {hit_rate_at_10:.4f}" if hit_rate_at_10 is not None else ""
    return f"{stage}trial {trial_id}: CV Poisson deviance {score}{hit} | {values}"


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


class Dimension(NamedTuple):
    """One ModelConfig field the share search tunes, on a log scale from low to high."""

    name: str
    low: float
    high: float


# The share hierarchy's search space, once: a new ModelConfig field is one more line. Ranges are
# log-scale, about x1/8 to x8 around the defaults; a configured value outside widens its range.
SHARE_SPACE: tuple[Dimension, ...] = (
    Dimension("share_halflife_days", 90.0, 6000.0),
    Dimension("zone_prior_strength", 1.0, 500.0),
    Dimension("daytype_prior_strength", 2.0, 1000.0),
    Dimension("child_zone_strength", 0.3, 100.0),
    Dimension("child_block_strength", 3.0, 1000.0),
    Dimension("child_halflife_days", 180.0, 12000.0),
)


def share_space(cfg: ModelConfig) -> kt.HyperParameters:
    """SHARE_SPACE as keras-tuner hyperparameters whose defaults are cfg's values."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for dim in SHARE_SPACE:
        value = float(getattr(cfg, dim.name))
        low, high = (min(dim.low, value), max(dim.high, value)) if value > 0 else dim[1:]
        hp.Float(dim.name, low, high, sampling="log", default=min(max(value, low), high))
    return hp


@dataclass
class ShareFold:
    """One time-ordered fold of the share search: shares fit on `fit_days` (the fold's `prepared`
    holds only those days' crashes), scored on the later `val_days` at the finest resolution.

    `grid` holds the timed crashes of the validation days on the finest cells (the zone table's
    order), built like the evaluation's grids; `volume` is each validation day's observed
    citywide volume and `daytype` its day type."""

    fit_days: pd.DatetimeIndex
    val_days: pd.DatetimeIndex
    prepared: Prepared
    grid: DenseGrid
    volume: np.ndarray  # [D]
    daytype: np.ndarray  # [D]


def share_fold_days(
    train_days: pd.DatetimeIndex, n_folds: int, fold_days: int
) -> list[tuple[pd.DatetimeIndex, pd.DatetimeIndex]]:
    """(fit days, validation days) of each fold: the last `n_folds` blocks of `fold_days` complete
    days (fewer when the days are too few), each fit on every training day before it."""
    days = pd.DatetimeIndex(sorted(pd.DatetimeIndex(train_days).unique()))
    size = min(fold_days, len(days) // (n_folds + 1))
    splitter = TimeSeriesSplit(n_splits=n_folds, test_size=size)
    return [(days[fit], days[val]) for fit, val in splitter.split(np.arange(len(days)))]


def finest_table(
    prepared: Prepared, fit_days: pd.DatetimeIndex, cfg: ModelConfig
) -> tuple[ShareTable, ZoneTable, np.ndarray]:
    """Both share stages fit on fit_days; the zone table and its rows at the finest resolution."""
    shares = ShareTable.fit(prepared.slots, fit_days, cfg)
    table = ZoneTable.build(
        shares, fit_children(prepared.crashes, fit_days, cfg, shares.zones), cfg.resolution
    )
    return shares, table, np.flatnonzero(table.resolution == cfg.finest_resolution)


def share_folds(
    prepared: Prepared, train_days: pd.DatetimeIndex, cfg: ModelConfig, n_folds: int
) -> list[ShareFold]:
    """The folds of the share search, each validation block as long as the holdout."""
    folds = []
    crashes = prepared.crashes
    for fit_days, val_days in share_fold_days(train_days, n_folds, cfg.holdout_days):
        fit = replace(
            prepared,
            slots=prepared.slots[prepared.slots["date"].isin(fit_days)],
            crashes=crashes[crashes["crash_date"].isin(fit_days)],
        )
        # The cells are the same for every trial: the zones are those with crashes on fit days.
        _, table, rows = finest_table(fit, fit_days, cfg)
        cells = np.array(list(table.row_of))[rows]
        grid = DenseGrid.build(
            prepared, crashes["cell"].to_numpy(), cells, val_days, cfg.grain.n_blocks
        )
        volume = prepared.days.set_index("date")["volume"].reindex(val_days).to_numpy(float)
        folds.append(
            ShareFold(
                fit_days=fit_days,
                val_days=val_days,
                prepared=fit,
                grid=grid,
                volume=volume,
                daytype=F.daytype(val_days),
            )
        )
    return folds


def fold_forecast(fold: ShareFold, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(expected, share), both [days, cells, blocks], of the share hierarchy under cfg on one
    fold at the finest resolution: expected = observed citywide volume x P(block) x P(zone) x
    child shares; share is the same without the volume, one ranking per day type."""
    shares, table, rows = finest_table(fold.prepared, fold.fit_days, cfg)
    if len(rows) != len(fold.grid.zones):
        raise ValueError("the fold's finest cells changed between trials")
    base, factor = table.base_rows[rows], table.factor[rows]  # [C], [C, B]
    # share[t, c, b] = P(b | t) x P(base zone of c | b, t) x P(c | base zone, b)
    share = shares.p_block[:, None, :] * np.moveaxis(shares.p_zone[base], 2, 0) * factor[None]
    by_day = share[fold.daytype]
    return fold.volume[:, None, None] * by_day, by_day


def score_shares(fold: ShareFold, cfg: ModelConfig) -> dict[str, float]:
    """Poisson deviance and hit@10% of the share hierarchy under cfg on one fold (`fold_forecast`).
    hit@10% is the evaluation's (`DenseGrid.hit_rate`), each date x block ranked by the day
    type's share: the order of expected, since a day's volume is one positive factor, without
    the ties that rounding the product could add."""
    expected, share = fold_forecast(fold, cfg)
    return {
        "poisson_deviance": poisson_deviance(fold.grid.observed.ravel(), expected.ravel()),
        "hit_rate_at_10": fold.grid.hit_rate(share, 0.10),
    }


def score_share_config(folds: list[ShareFold], cfg: ModelConfig) -> dict[str, float]:
    """Mean of each score over the folds."""
    scores = [score_shares(fold, cfg) for fold in folds]
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def trial_metric(trial: kt.engine.trial.Trial, name: str) -> float | None:
    """A metric a trial reported, None when it failed before reporting."""
    if name not in trial.metrics.metrics:
        return None
    return float(trial.metrics.get_last_value(name))


def make_share_tuner(
    folds: list[ShareFold], cfg: ModelConfig, max_trials: int, directory: Path
) -> kt.Tuner:
    """keras-tuner over SHARE_SPACE: a Bayesian oracle whose first trial is cfg as configured, and
    a generic Tuner whose run_trial returns the fold-mean scores (no Keras model is built)."""
    import keras_tuner as kt

    class ConfiguredFirstOracle(kt.oracles.BayesianOptimizationOracle):
        def populate_space(self, trial_id: str) -> dict:
            if not self.trials:
                values = {hp.name: hp.default for hp in self.hyperparameters.space}
                return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
            return super().populate_space(trial_id)

    class ShareTuner(kt.Tuner):
        def run_trial(self, trial: kt.engine.trial.Trial, *args, **kwargs) -> dict[str, float]:
            return score_share_config(folds, cfg.model_copy(update=trial.hyperparameters.values))

        def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
            super().on_trial_end(trial)
            done = self.oracle.get_trial(trial.trial_id)
            hit = trial_metric(done, "hit_rate_at_10")
            log.info(
                trial_line(
                    done.trial_id,
                    dict(done.hyperparameters.values),
                    float(done.score) if done.score is not None else None,
                    stage="share ",
                    score_format=".6f",
                    hit_rate_at_10=hit,
                )
            )

    space = share_space(cfg)
    oracle = ConfiguredFirstOracle(
        objective=kt.Objective("poisson_deviance", "min"),
        max_trials=max_trials,
        hyperparameters=space,
        # keras-tuner's default, 3 random points per dimension, would leave no trial to the GP
        num_initial_points=max(2, max_trials // 2),
        seed=cfg.seed,
    )
    oracle.verbose = 0
    return ShareTuner(
        oracle=oracle, directory=str(directory), project_name="shares", overwrite=True
    )


def search_shares(
    prepared: Prepared,
    train_days: pd.DatetimeIndex,
    cfg: ModelConfig,
    tuning: TuningConfig,
    directory: Path,
) -> tuple[dict, list[dict]]:
    """Best share-hierarchy values and every trial (values, fold-mean Poisson deviance at the
    finest resolution, fold-mean hit@10%)."""
    folds = share_folds(prepared, train_days, cfg, tuning.cv_folds)
    tuner = make_share_tuner(folds, cfg, tuning.share_trials, directory)
    tuner.search()
    trials = [
        {
            "trial_id": t.trial_id,
            "params": dict(t.hyperparameters.values),
            "poisson_deviance": float(t.score) if t.score is not None else None,
            "hit_rate_at_10": trial_metric(t, "hit_rate_at_10"),
        }
        for t in tuner.oracle.trials.values()
    ]
    best = dict(tuner.oracle.get_best_trials(1)[0].hyperparameters.values)
    return best, trials
