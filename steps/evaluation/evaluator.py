"""evaluator: new model vs production model vs historical average, on one time-ordered holdout."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from visionzero.data.dataset import DatasetRef
from visionzero.evaluation.holdout import EvaluationReport, evaluate
from visionzero.evaluation.plots import report_html, write_plots
from visionzero.model.crash_risk import CrashRiskModel, ModelConfig
from visionzero.model.training_data import load_split
from visionzero.platform.registry import load_stage_model
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def evaluator(
    dataset: DatasetRef, crash_model: Path, model: ModelConfig
) -> tuple[
    Annotated[EvaluationReport, "evaluation_report"],
    Annotated[HTMLString, "evaluation_visualization"],
]:
    prepared, train_days, holdout_days = load_split(dataset, model)
    production = load_stage_model("production")
    report = evaluate(
        prepared,
        train_days,
        holdout_days,
        CrashRiskModel.load(crash_model),
        CrashRiskModel.load(production[1]) if production else None,
        production[0].number if production else None,
    )
    roles = {
        "candidate": report.candidate,
        "baseline": report.baseline,
        "production": report.production,
    }
    for role, scores in roles.items():
        if scores is not None:
            mlflow.log_metrics({f"{role}_{k}": v for k, v in scores.model_dump().items()})
            logger.info("%-10s %s", role, {k: round(v, 4) for k, v in scores.headline().items()})
    with tempfile.TemporaryDirectory(prefix="evaluation_") as tmp:
        out = Path(tmp)
        (out / "evaluation.json").write_text(report.model_dump_json(indent=2))
        page = report_html(report, write_plots(report, out))
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    metadata = {
        "metrics": report.candidate.headline(),
        "baseline_metrics": report.baseline.headline(),
        "holdout_window": report.holdout_window,
        "calibration_ratio": {
            role: scores.calibration_ratio for role, scores in roles.items() if scores is not None
        },
    }
    if report.production is not None:
        metadata["production_metrics_same_holdout"] = report.production.headline()
    log_metadata(metadata=metadata, infer_model=True)
    return report, HTMLString(page)
