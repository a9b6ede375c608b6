"""The Model Control Plane view: which model versions hold the production and staging stages.

The deployment state decides; `sync_stages` only mirrors it into ZenML and MLflow.
"""

from __future__ import annotations

from typing import Any

from visionzero.platform.settings import MODEL_NAME
from visionzero.platform.stage import STAGES

MODEL_ARTIFACT = "crash_model"


def stage_version(stage: str) -> Any | None:
    from zenml.client import Client
    from zenml.enums import ModelStages

    try:
        return Client().get_model_version(MODEL_NAME, ModelStages(stage))
    except KeyError:
        return None


def model_version(number: int) -> Any:
    """The ZenML model version with this number (KeyError when there is none)."""
    from zenml.client import Client

    return Client().get_model_version(MODEL_NAME, number)


def version_model(number: int) -> Any:
    """The trained model (the trainer's crash_model artifact) of a ZenML model version."""
    artifact = model_version(number).get_artifact(MODEL_ARTIFACT)
    if artifact is None:
        raise LookupError(f"model version {number} has no {MODEL_ARTIFACT} artifact")
    return artifact.load()


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


def _mlflow_version(client: Any, zenml_version: int) -> str:
    for version in client.search_model_versions(f"name='{MODEL_NAME}'"):
        if version.tags.get("zenml_model_version") == str(zenml_version):
            return version.version
    raise LookupError(f"no MLflow version of {MODEL_NAME} mirrors ZenML version {zenml_version}")


def sync_stages(held: dict[str, int]) -> None:
    """Make ZenML stages and MLflow aliases exactly `held` (stage -> ZenML version number).

    A version holding a stage it no longer has is archived and loses the alias. ZenML first, then
    MLflow; the first failure is raised for the caller to report (the next sync repairs both).
    """
    from zenml.client import Client
    from zenml.enums import ModelStages

    for stage in STAGES:
        holders = Client().list_model_versions(model=MODEL_NAME, stage=ModelStages(stage), size=100)
        for version in holders.items:
            if version.number not in held.values():
                version.set_stage(ModelStages.ARCHIVED, force=True)
    for stage, number in held.items():
        model_version(number).set_stage(ModelStages(stage), force=True)
    client = _mlflow_client()
    aliases = client.get_registered_model(MODEL_NAME).aliases
    for stage in STAGES:
        if stage in held:
            client.set_registered_model_alias(
                MODEL_NAME, stage, _mlflow_version(client, held[stage])
            )
        elif stage in aliases:
            client.delete_registered_model_alias(MODEL_NAME, stage)


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
