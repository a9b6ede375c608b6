"""trainer: fit the two-stage model on the training days only: the fit the evaluator scores. The
model that serves is this recipe refit on every complete day (refitter)."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.model.crash_risk import CrashRiskModel, ModelConfig, train
from visionzero.model.materializer import CrashRiskModelMaterializer
from visionzero.model.training_data import load_split
from visionzero.model.tuning import TunedParams
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME, output_materializers=CrashRiskModelMaterializer)
def trainer(
    dataset: DatasetRef, tuned_params: TunedParams, model: ModelConfig
) -> Annotated[CrashRiskModel, "scored_model"]:
    prepared, train_days, _ = load_split(dataset, model)
    tuned = tuned_params.apply(model)  # the tuned share fields land in the model's meta config
    crash_model = train(prepared, train_days, tuned_params.volume, tuned, dataset.version)
    mlflow.log_params({f"volume_{k}": v for k, v in tuned_params.volume.items()})
    mlflow.log_params(tuned.model_dump())
    logger.info(
        "trainer: window %s, %d zones, level thresholds %s",
        crash_model.meta["training_window"],
        len(crash_model.shares.zones),
        [round(t, 4) for t in crash_model.thresholds],
    )
    return crash_model
