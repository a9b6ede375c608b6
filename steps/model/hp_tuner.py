"""hp_tuner: keras-tuner Bayesian search over the volume model.

Time-ordered CV, every trial in MLflow.
"""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.model.crash_risk import ModelConfig
from visionzero.model.training_data import load_split
from visionzero.model.tuning import TuningConfig, search
from visionzero.platform.settings import paths
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def hp_tuner(
    dataset: DatasetRef, model: ModelConfig, tuning: TuningConfig
) -> Annotated[dict, "best_params"]:
    prepared, train_days, _ = load_split(dataset, model)
    best, trials = search(prepared, train_days, model, tuning, paths().tuner_dir)
    for trial in trials:
        with mlflow.start_run(run_name=f"tuner-trial-{trial['trial_id']}", nested=True):
            mlflow.log_params(trial["params"])
            if trial["poisson_deviance"] is not None:
                mlflow.log_metric("cv_poisson_deviance", trial["poisson_deviance"])
    best_score = min(t["poisson_deviance"] for t in trials if t["poisson_deviance"] is not None)
    logger.info(
        "hp_tuner: %d trials, best CV Poisson deviance %.3f with %s", len(trials), best_score, best
    )
    log_metadata(
        metadata={
            "tuning": {
                "trials": len(trials),
                "best_cv_poisson_deviance": best_score,
                "best_params": best,
            }
        }
    )
    return best
