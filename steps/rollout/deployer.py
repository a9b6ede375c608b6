"""deployer: record the decision in the deployment state, then roll out on the configured target."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.evaluation.decision import Decision
from visionzero.rollout.actions import Deployment, deploy
from visionzero.serving.bento_build import Release

logger = get_logger(__name__)


@step
def deployer(
    decision: Decision, release: Release | None, target: str
) -> Annotated[Deployment, "deployment"]:
    result = deploy(decision.action, release, target)
    logger.info("deployer: %s", result.summary)
    log_metadata(metadata={"deployment": result.model_dump(exclude={"state"})})
    return result
