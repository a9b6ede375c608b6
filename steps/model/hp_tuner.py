"""hp_tuner: keras-tuner Bayesian searches over the volume model and the share hierarchy.

Time-ordered CV, every trial in MLflow (nested runs), both bests in the step's metadata.
"""

from __future__ import annotations

from typing import Annotated

import mlflow
from filelock import FileLock
from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.model.crash_risk import ModelConfig
from visionzero.model.training_data import load_split
from visionzero.model.tuning import TunedParams, TuningConfig, search, search_shares
from visionzero.platform.settings import paths
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


def log_trials(stage: str, trials: list[dict]) -> float:
    """Each trial as a nested MLflow run; the best (lowest) CV Poisson deviance."""
    for trial in trials:
        with mlflow.start_run(run_name=f"{stage}-trial-{trial['trial_id']}", nested=True):
            mlflow.log_params(trial["params"])
            for key in ("poisson_deviance", "hit_rate_at_10"):
                if trial.get(key) is not None:
                    mlflow.log_metric(f"cv_{key}", trial[key])
    return min(t["poisson_deviance"] for t in trials if t["poisson_deviance"] is not None)


@step(experiment_tracker=TRACKER_NAME)
def hp_tuner(
    dataset: DatasetRef, model: ModelConfig, tuning: TuningConfig
) -> Annotated[TunedParams, "tuned_params"]:
    prepared, train_days, _ = load_split(dataset, model)
    tuner_dir = paths().tuner_dir
    tuner_dir.mkdir(parents=True, exist_ok=True)
    # each search overwrites its folder under tuner/: two runs at once take turns
    with FileLock(tuner_dir / "searches.lock"):
        volume, volume_trials = search(prepared, train_days, model, tuning, tuner_dir)
        volume_score = log_trials("tuner", volume_trials)
        logger.info(
            "hp_tuner: volume %d trials, best CV Poisson deviance %.3f with %s",
            len(volume_trials),
            volume_score,
            volume,
        )
        shares, share_trials = search_shares(prepared, train_days, model, tuning, tuner_dir)
        share_score = log_trials("share", share_trials)
        logger.info(
            "hp_tuner: shares %d trials, best CV Poisson deviance (resolution %d) %.6f with %s",
            len(share_trials),
            model.finest_resolution,
            share_score,
            shares,
        )
    log_metadata(
        metadata={
            "tuning": {
                "trials": len(volume_trials),
                "best_cv_poisson_deviance": volume_score,
                "best_params": volume,
            },
            "share_tuning": {
                "trials": len(share_trials),
                "best_cv_poisson_deviance": share_score,
                "resolution": model.finest_resolution,
                "best_params": shares,
            },
        }
    )
    return TunedParams(volume=volume, shares=shares)
