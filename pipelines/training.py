"""The training pipeline: load -> tune -> train -> evaluate -> decide -> build Bentos -> deploy -> alert."""
from __future__ import annotations

from zenml import Model, pipeline

from steps.data_loader import data_loader
from visionzero.stack import MODEL_NAME


@pipeline(
    enable_cache=False,
    model=Model(name=MODEL_NAME, description="Expected crashes per H3 zone and 4-hour block, NYC",
                tags=["visionzero"]),
)
def training_pipeline() -> None:
    data_loader()
