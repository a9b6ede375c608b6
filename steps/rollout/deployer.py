"""deployer: record the decision in the deployment state, roll out on the configured target, then
sync the ZenML stages and MLflow aliases from the state.

A registry failure is reported and never undoes the recorded deployment.
"""

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
    if result.registry_error:
        logger.warning("deployer: registry stages not synced (%s)", result.registry_error)
    log_metadata(metadata={"deployment": result.model_dump(exclude={"state"})})
    return result
