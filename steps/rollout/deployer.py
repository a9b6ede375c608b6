"""deployer: record the decision in the deployment state, then roll it out on the configured target."""
from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.rollout.actions import deploy

logger = get_logger(__name__)


@step
def deployer(decision: dict, bentos: dict, target: str = "local") -> Annotated[dict, "deployment"]:
    result = deploy(decision["action"], bentos, target)
    logger.info("deployer: %s", result["summary"])
    log_metadata(metadata={"deployment": {k: v for k, v in result.items() if k != "state"}})
    return result
