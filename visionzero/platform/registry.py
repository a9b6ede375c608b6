"""The Model Control Plane view: which model versions hold the production and staging stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionzero.platform.settings import MODEL_NAME

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


def mlflow_tracking_uri() -> str:
    """Where the stack's MLflow tracker logs: MLFLOW_TRACKING_URI when set, else ZenML's local
    SQLite store inside the artifact store (`sqlite:///.../mlflow.db`)."""
    from zenml.client import Client

    return Client().active_stack.experiment_tracker.get_tracking_uri()


def _mlflow_client() -> Any:
    import mlflow

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    return mlflow.MlflowClient()


def register_mlflow_version(run_id: str, artifact_uri: str, zenml_version: int) -> str:
    """Mirror a ZenML model version in MLflow's registry, tagged with the ZenML version number."""
    client = _mlflow_client()
    try:
        client.get_registered_model(MODEL_NAME)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception for a missing model
        client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(
        MODEL_NAME,
        source=artifact_uri,
        run_id=run_id,
        tags={"zenml_model_version": str(zenml_version)},
    )
    return version.version


def set_mlflow_alias(stage: str, zenml_version: int) -> None:
    client = _mlflow_client()
    for version in client.search_model_versions(f"name='{MODEL_NAME}'"):
        if version.tags.get("zenml_model_version") == str(zenml_version):
            client.set_registered_model_alias(MODEL_NAME, stage, version.version)
            return


def set_stage(version_id: Any, stage: str) -> None:
    from zenml.client import Client
    from zenml.enums import ModelStages

    Client().get_model_version(MODEL_NAME, version_id).set_stage(ModelStages(stage), force=True)


def describe(version: Any) -> dict:
    meta = version.run_metadata
    return {
        "version": version.number,
        "name": version.name,
        "stage": str(version.stage),
        "metrics": meta.get("metrics"),
        "baseline_metrics": meta.get("baseline_metrics"),
        "data_version": meta.get("data_version"),
        "training_window": meta.get("training_window"),
    }
