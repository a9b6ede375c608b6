"""evaluator: new model vs the production model vs the historical average, on one time-ordered holdout."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.evaluation.holdout import METRIC_KEYS, evaluate
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.evaluation.plots import write_plots
from visionzero.platform.registry import load_stage_model
from visionzero.platform.stack import TRACKER_NAME
from visionzero.model.training_data import load_split

logger = get_logger(__name__)


def _headline(scores: dict) -> dict:
    return {k: scores[k] for k in METRIC_KEYS}


@step(experiment_tracker=TRACKER_NAME)
def evaluator(dataset: DatasetRef, crash_model: Path, model_config: dict
              ) -> tuple[Annotated[dict, "evaluation_report"], Annotated[Path, "evaluation_files"]]:
    prepared, train_days, holdout_days, _ = load_split(dataset.data_dir, model_config)
    production = load_stage_model("production")
    report = evaluate(prepared, train_days, holdout_days, CrashRiskModel.load(crash_model),
                      CrashRiskModel.load(production[1]) if production else None)
    report["production_version"] = production[0].number if production else None
    out = Path(tempfile.mkdtemp(prefix="evaluation_"))
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    write_plots(report, out)
    for role in ("candidate", "baseline", "production"):
        if report[role]:
            mlflow.log_metrics({f"{role}_{k}": v for k, v in report[role].items()})
    mlflow.log_artifacts(str(out), artifact_path="evaluation")
    metadata = {"metrics": _headline(report["candidate"]), "baseline_metrics": _headline(report["baseline"]),
                "holdout_window": report["holdout_window"],
                "calibration_ratio": {role: report[role]["calibration_ratio"]
                                      for role in ("candidate", "baseline", "production") if report[role]}}
    if report["production"]:
        metadata["production_metrics_same_holdout"] = _headline(report["production"])
    log_metadata(metadata=metadata, infer_model=True)
    for role in ("candidate", "production", "baseline"):
        if report[role]:
            logger.info("%-10s %s", role, {k: round(report[role][k], 4) for k in METRIC_KEYS})
    return report, out
