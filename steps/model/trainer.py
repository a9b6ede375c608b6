"""trainer: fit the two-stage model on training days; ZenML stores it (XGBoost JSON + JSON metadata,
CrashRiskModelMaterializer) and MLflow gets the same files, with no temporary folder left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.model.crash_risk import CrashRiskModel, ModelConfig, train
from visionzero.model.materializer import CrashRiskModelMaterializer
from visionzero.model.training_data import load_split
from visionzero.model.tuning import TunedParams
from visionzero.platform.registry import MODEL_ARTIFACT, register_mlflow_version
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME, output_materializers=CrashRiskModelMaterializer)
def trainer(
    dataset: DatasetRef, tuned_params: TunedParams, model: ModelConfig
) -> Annotated[
    CrashRiskModel, ArtifactConfig(name=MODEL_ARTIFACT, artifact_type=ArtifactType.MODEL)
]:
    prepared, train_days, _ = load_split(dataset, model)
    tuned = tuned_params.apply(model)  # the tuned share fields land in the model's meta config
    crash_model = train(prepared, train_days, tuned_params.volume, tuned, dataset.version)
    mlflow.log_params({f"volume_{k}": v for k, v in tuned_params.volume.items()})
    mlflow.log_params(tuned.model_dump())
    with tempfile.TemporaryDirectory(prefix="crash_model_") as tmp:
        mlflow.log_artifacts(str(crash_model.save(Path(tmp))), artifact_path="model")
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
    return crash_model
