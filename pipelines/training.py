"""The training pipeline: load -> tune -> train -> evaluate -> decide -> build Bentos -> deploy -> alert."""
from __future__ import annotations

from zenml import Model, pipeline

from steps.data import data_loader
from steps.evaluation import evaluator, trigger_decision
from steps.model import hp_tuner, trainer
from steps.rollout import deployer, discord_alert
from steps.serving import bento_builder
from visionzero.rollout.alerts import build_message, send
from visionzero.platform.stack import MODEL_NAME


def alert_failure(exception: BaseException) -> None:
    """Pipeline failure hook: the on-call hears about it the same way as about deploys."""
    send(build_message("failure", "Crash-risk training pipeline failed",
                       {"error": f"{type(exception).__name__}: {str(exception)[:500]}"}))


@pipeline(
    enable_cache=False,
    on_failure=alert_failure,
    model=Model(name=MODEL_NAME, description="Expected crashes per H3 zone and 4-hour block, NYC",
                tags=["visionzero"]),
)
def training_pipeline(model_config: dict, deploy_target: str = "local") -> None:
    dataset = data_loader()
    best_params = hp_tuner(dataset, model_config)
    crash_model = trainer(dataset, best_params, model_config)
    report, _ = evaluator(dataset, crash_model, model_config)
    decision = trigger_decision(report)
    bentos = bento_builder(crash_model, report, decision, dataset)
    deployment = deployer(decision, bentos, deploy_target)
    discord_alert(decision, report, deployment)
