"""bento_builder: model into the Bento store, then the server Bento and the arm64 (Pi 5) Bento."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.evaluation.decision import Decision
from visionzero.evaluation.holdout import EvaluationReport
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.serving.bento_build import ARM64_PLATFORM, Release, build_bento, save_model

logger = get_logger(__name__)


@step
def bento_builder(
    crash_model: CrashRiskModel,
    evaluation_report: EvaluationReport,
    decision: Decision,
    dataset: DatasetRef,
) -> Annotated[Release | None, "release"]:
    """Builds only for a model that will be deployed; a losing challenger changes nothing."""
    if decision.action == "none":
        logger.info("bento_builder: decision is 'none', no Bento built")
        return None
    version = get_step_context().model_version.number
    with tempfile.TemporaryDirectory(prefix="crash_model_") as tmp:  # copied into the store
        model_tag = save_model(
            crash_model.save(Path(tmp)),
            version,
            evaluation_report.candidate.headline(),
            dataset.version,
        )
    release = Release(
        model_version=version,
        model_tag=model_tag,
        bento_tag=build_bento(model_tag, "bentofile.yaml"),
        arm64_bento_tag=build_bento(model_tag, "bentofile.arm64.yaml", ARM64_PLATFORM),
    )
    logger.info("bento_builder: %s", release)
    log_metadata(metadata={"bentos": release.model_dump()}, infer_model=True)
    return release
