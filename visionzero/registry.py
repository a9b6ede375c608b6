"""The Model Control Plane view: which model versions hold the production and staging stages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from visionzero.stack import MODEL_NAME

MODEL_ARTIFACT = "crash_model"


def stage_version(stage: str) -> Any | None:
    from zenml.client import Client
    from zenml.enums import ModelStages

    try:
        return Client().get_model_version(MODEL_NAME, ModelStages(stage))
    except KeyError:
        return None


def load_stage_model(stage: str) -> tuple[Any, Path] | None:
    """(model version, local directory of its saved model) for the stage, or None."""
    version = stage_version(stage)
    if version is None:
        return None
    artifact = version.get_artifact(MODEL_ARTIFACT)
    return (version, Path(artifact.load())) if artifact is not None else None


def set_stage(version_id: Any, stage: str) -> None:
    from zenml.client import Client
    from zenml.enums import ModelStages

    Client().get_model_version(MODEL_NAME, version_id).set_stage(ModelStages(stage), force=True)


def describe(version: Any) -> dict:
    meta = version.run_metadata
    return {"version": version.number, "name": version.name, "stage": str(version.stage),
            "metrics": meta.get("metrics"), "baseline_metrics": meta.get("baseline_metrics"),
            "data_version": meta.get("data_version"), "training_window": meta.get("training_window")}
