"""trainer: fit the two-stage model on training days and save it in XGBoost's native format + JSON."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.model.crash_risk import train
from visionzero.platform.registry import MODEL_ARTIFACT, register_mlflow_version
from visionzero.platform.stack import TRACKER_NAME
from visionzero.model.training_data import load_split

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def trainer(dataset: DatasetRef, best_params: dict, model_config: dict
            ) -> Annotated[Path, MODEL_ARTIFACT]:
    prepared, train_days, _, cfg = load_split(dataset.data_dir, model_config)
    model = train(prepared, train_days, best_params, cfg, dataset.version)
    out = model.save(Path(tempfile.mkdtemp(prefix="crash_model_")))
    mlflow.log_params({f"volume_{k}": v for k, v in best_params.items()})
    mlflow.log_params({k: v for k, v in cfg.__dict__.items()})
    mlflow.log_artifacts(str(out), artifact_path="model")
    active = mlflow.active_run()
    register_mlflow_version(active.info.run_id, f"{active.info.artifact_uri}/model",
                            get_step_context().model_version.number)
    logger.info("trainer: window %s, %d zones, level thresholds %s", model.meta["training_window"],
                len(model.shares.zones), [round(t, 4) for t in model.thresholds])
    log_metadata(metadata={"training_window": model.meta["training_window"],
                           "data_version": dataset.version, "thresholds": model.thresholds},
                 infer_model=True)
    return out
