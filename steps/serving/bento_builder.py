"""bento_builder: model into the Bento store, then the server Bento and the arm64 Bento for a Pi 5."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef
from visionzero.serving.bento_build import ARM64_PLATFORM, build_bento, save_model

logger = get_logger(__name__)


@step
def bento_builder(crash_model: Path, evaluation_report: dict, decision: dict, dataset: DatasetRef
                  ) -> Annotated[dict, "bentos"]:
    """Builds only for a model that will be deployed; a losing challenger changes nothing."""
    if decision["action"] == "none":
        logger.info("bento_builder: decision is 'none', no Bento built")
        return {}
    version = get_step_context().model_version.number
    metrics = {k: evaluation_report["candidate"][k] for k in
               ("poisson_deviance", "hit_rate_at_10", "hit_rate_at_5", "pai_at_10", "qwk")}
    model_tag = save_model(crash_model, version, metrics, dataset.version)
    bentos = {"model_version": version, "model_tag": model_tag,
              "bento_tag": build_bento(model_tag, "bentofile.yaml"),
              "arm64_bento_tag": build_bento(model_tag, "bentofile.arm64.yaml", ARM64_PLATFORM)}
    logger.info("bento_builder: %s", bentos)
    log_metadata(metadata={"bentos": bentos}, infer_model=True)
    return bentos
