"""The training pipeline: load -> tune -> train -> evaluate -> decide -> build Bentos -> deploy -> alert."""
from __future__ import annotations

from zenml import Model, pipeline

from steps.data_loader import data_loader
from steps.evaluator import evaluator
from steps.hp_tuner import hp_tuner
from steps.trainer import trainer
from steps.trigger_decision import trigger_decision
from visionzero.stack import MODEL_NAME


@pipeline(
    enable_cache=False,
    model=Model(name=MODEL_NAME, description="Expected crashes per H3 zone and 4-hour block, NYC",
                tags=["visionzero"]),
)
def training_pipeline(model_config: dict) -> None:
    dataset = data_loader()
    best_params = hp_tuner(dataset, model_config)
    crash_model = trainer(dataset, best_params, model_config)
    report, _ = evaluator(dataset, crash_model, model_config)
    trigger_decision(report)
