"""evaluator: new model vs production vs the historical average at every served resolution, on the
latest holdout and a rolling-origin backtest, with bootstrap intervals.

Production is what the deployment state says serves (its release's model version, which the
pipeline reads and passes in: a step reads only its own stage and lower ones), never a registry
stage: a stale stage must not decide what the challenger is compared with. Its recipe is refit on
the candidate's training days (visionzero.evaluation.holdout says why)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from visionzero.data.dataset import DatasetRef
from visionzero.evaluation.backtest import EvaluationConfig
from visionzero.evaluation.holdout import EvaluationReport, evaluate
from visionzero.evaluation.plots import markdown_table, report_html, write_plots
from visionzero.model.crash_risk import CrashRiskModel, ModelConfig
from visionzero.model.training_data import load_split
from visionzero.platform.registry import version_model
from visionzero.platform.stack import TRACKER_NAME

logger = get_logger(__name__)


@step(experiment_tracker=TRACKER_NAME)
def evaluator(
    dataset: DatasetRef,
    crash_model: CrashRiskModel,
    model: ModelConfig,
    evaluation: EvaluationConfig,
    production_version: int | None,
) -> tuple[
    Annotated[EvaluationReport, "evaluation_report"],
    Annotated[HTMLString, "evaluation_visualization"],
]:
    prepared, train_days, holdout_days = load_split(dataset, model)
    production = version_model(production_version) if production_version is not None else None
    report = evaluate(
        prepared,
        train_days,
        holdout_days,
        crash_model,
        production,
        production_version,
        evaluation,
    )
    roles = {
        "candidate": report.candidate,
        "baseline": report.baseline,
        "production": report.production,
    }
    for role, scores in roles.items():
        if scores is not None:
            mlflow.log_metrics({f"{role}_{k}": v for k, v in scores.model_dump().items()})
    for line in markdown_table(report):
        logger.info("%s", line)
    with tempfile.TemporaryDirectory(prefix="evaluation_") as tmp:
        out = Path(tmp)
        (out / "evaluation.json").write_text(report.model_dump_json(indent=2))
        page = report_html(report, write_plots(report, out))
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    metadata = {
        "resolution": report.resolution,
        "scored_fit": report.scored_fit,
        "served_fit": report.served_fit,
        "metrics": report.candidate.headline(),
        "baseline_metrics": report.baseline.headline(),
        "holdout_window": report.holdout_window,
        "calibration_ratio": {
            role: scores.calibration_ratio for role, scores in roles.items() if scores is not None
        },
    }
    if report.production is not None:
        metadata["production_metrics_same_holdout"] = report.production.headline()
    if report.production_not_comparable:
        metadata["production_not_comparable"] = report.production_not_comparable
        logger.info("production: %s", report.production_not_comparable)
    log_metadata(metadata=metadata, infer_model=True)
    return report, HTMLString(page)
