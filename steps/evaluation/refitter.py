"""refitter: the deployed model is the scored recipe refit on every complete day, holdout
included, so what serves has seen the latest days. ZenML stores it as the model version's model
(XGBoost JSON + JSON metadata) and MLflow registers the same files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.evaluation.backtest import recipe_config, refit
from visionzero.evaluation.holdout import EvaluationReport
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.model.materializer import CrashRiskModelMaterializer
from visionzero.model.training_data import load_split
from visionzero.platform.registry import MODEL_ARTIFACT, register_mlflow_version
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME, output_materializers=CrashRiskModelMaterializer)
def refitter(
    dataset: DatasetRef, scored_model: CrashRiskModel, evaluation_report: EvaluationReport
) -> Annotated[
    CrashRiskModel, ArtifactConfig(name=MODEL_ARTIFACT, artifact_type=ArtifactType.MODEL)
]:
    """Runs after the evaluator (it takes the report) so the scored fit is judged first."""
    prepared, train_days, holdout_days = load_split(dataset, recipe_config(scored_model))
    served = refit(scored_model, prepared, train_days.union(holdout_days))
    with tempfile.TemporaryDirectory(prefix="crash_model_") as tmp:
        mlflow.log_artifacts(str(served.save(Path(tmp))), artifact_path="model")
    active = mlflow.active_run()
    register_mlflow_version(
        active.info.run_id,
        f"{active.info.artifact_uri}/model",
        get_step_context().model_version.number,
    )
    logger.info(
        "refitter: scored %s; serving %s",
        evaluation_report.scored_fit,
        evaluation_report.served_fit,
    )
    log_metadata(
        metadata={
            "data_version": dataset.version,
            "training_window": served.meta["training_window"],
            "scored_training_window": scored_model.meta["training_window"],
            "thresholds": served.thresholds,
            "thresholds_by_resolution": served.meta["thresholds_by_resolution"],
        },
        infer_model=True,
    )
    return served
