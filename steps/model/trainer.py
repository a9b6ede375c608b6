"""trainer: fit the two-stage model on training days, save it in XGBoost's native format + JSON."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.model.crash_risk import ModelConfig, train
from visionzero.model.training_data import load_split
from visionzero.platform.registry import MODEL_ARTIFACT, register_mlflow_version
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def trainer(
    dataset: DatasetRef, best_params: dict, model: ModelConfig
) -> Annotated[Path, ArtifactConfig(name=MODEL_ARTIFACT, artifact_type=ArtifactType.MODEL)]:
    prepared, train_days, _ = load_split(dataset, model)
    crash_model = train(prepared, train_days, best_params, model, dataset.version)
    out = crash_model.save(Path(tempfile.mkdtemp(prefix="crash_model_")))
    mlflow.log_params({f"volume_{k}": v for k, v in best_params.items()})
    mlflow.log_params(model.model_dump())
    mlflow.log_artifacts(str(out), artifact_path="model")
    active = mlflow.active_run()
    register_mlflow_version(
        active.info.run_id,
        f"{active.info.artifact_uri}/model",
        get_step_context().model_version.number,
    )
    logger.info(
        "trainer: window %s, %d zones, level thresholds %s",
        crash_model.meta["training_window"],
        len(crash_model.shares.zones),
        [round(t, 4) for t in crash_model.thresholds],
    )
    log_metadata(
        metadata={
            "training_window": crash_model.meta["training_window"],
            "data_version": dataset.version,
            "thresholds": crash_model.thresholds,
        },
        infer_model=True,
    )
    return out
