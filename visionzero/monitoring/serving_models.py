"""What the monitor judges: the models the deployment state serves, loaded from the Model
Control Plane, their data at their grain, and the evaluator's holdout interval of production."""

from __future__ import annotations

import pandas as pd

from visionzero.data.dataset import DatasetRef, load_frames
from visionzero.data.versioning import checkout_version
from visionzero.evaluation.metrics import Interval
from visionzero.model.crash_risk import CrashRiskModel, ModelConfig, Prepared, prepare
from visionzero.monitoring.forward import StagedModel, Unscored, deployed_dates
from visionzero.platform.registry import model_version, version_model
from visionzero.rollout.deployment_state import DeploymentState


def serving_models(state: DeploymentState) -> tuple[dict[str, StagedModel], dict[str, Unscored]]:
    """Production and staging as the state names them (never a registry stage), and each serving
    stage whose model cannot be loaded from the Model Control Plane with the reason. A stage that
    cannot be scored forward still serves: its health is judged, and a failing one rolled back."""
    dates = deployed_dates(state)
    models, unscored = {}, {}
    for stage, release in state.serving().items():
        version, deployed = release.model_version, dates[stage]
        try:
            models[stage] = StagedModel(version_model(version), version, deployed)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            reason = f"model version {version} not loadable: {type(exc).__name__}: {exc}"
            unscored[stage] = Unscored(model_version=version, reason=reason[:300])
    return models, unscored


def grain_config(model: CrashRiskModel) -> ModelConfig:
    """The grain a model was trained at: the data must be prepared at it to score it."""
    return ModelConfig(
        resolution=model.grain.resolution,
        block_hours=model.grain.block_hours,
        finest_resolution=max(model.resolutions),
    )


def prepared_for(
    dataset: DatasetRef, models: dict[str, StagedModel]
) -> tuple[Prepared, pd.DataFrame]:
    """The run's dataset version (its complete days at the serving models' grain, and the raw
    crash rows the drift checks read); staging of another grain than production cannot be paired
    with it, so that is refused here."""
    configs = {stage: grain_config(staged.model) for stage, staged in models.items()}
    if len({(c.resolution, c.block_hours, c.finest_resolution) for c in configs.values()}) > 1:
        raise ValueError(f"production and staging have different grains: {configs}")
    crashes, complete_days, weather = load_frames(checkout_version(dataset.version))
    cfg = next(iter(configs.values()), ModelConfig())
    return prepare(crashes, complete_days, weather, cfg), crashes


def holdout_deviance(version: int, resolution: int) -> Interval | None:
    """The model's holdout deviance with its 95% interval, from its evaluation report; None when
    the version has no report at that resolution."""
    artifact = model_version(version).get_artifact("evaluation_report")
    if artifact is None:
        return None
    result = artifact.load().holdout.get(str(resolution))
    return result.roles["candidate"]["poisson_deviance"] if result else None
