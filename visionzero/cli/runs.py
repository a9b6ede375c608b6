"""The pipeline runs the command line starts: the backfill, training and monitoring. Each run's
configuration is checked before anything starts (a bad key stops it with the key's name), the
pipelines are imported once ZenML's store exists, and each run closes with what it decided."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from visionzero.cli.startup import stack_in_place
from visionzero.platform.settings import REPO_ROOT, settings

if TYPE_CHECKING:
    from zenml.models import PipelineRunResponse
    from zenml.pipelines.pipeline_definition import Pipeline

    from pipelines.monitoring import MonitoringParameters
    from pipelines.training import TrainingParameters
    from visionzero.data.dataset import LoadConfig

T = TypeVar("T")

DEFAULT_CONFIG = REPO_ROOT / "configs" / "training.yaml"
MONITORING_CONFIG = REPO_ROOT / "configs" / "monitoring.yaml"


def pipeline_module(name: Literal["training", "monitoring"]) -> ModuleType:
    """`pipelines.<name>`, imported once ZenML's store exists: importing it touches the store
    (its decorators resolve the hooks' source through it). The one place that imports them."""
    from visionzero.platform.stack import initialise_store

    initialise_store()
    return importlib.import_module(f"pipelines.{name}")


def checked(load: Callable[[Path], T], config_path: Path) -> T:
    """The configuration `load` reads from `config_path`, validated the way the pipelines define
    it; an invalid one stops the command in one line naming the file and the key."""
    invalid = pipeline_module("training").InvalidConfig
    try:
        return load(config_path)
    except invalid as exc:
        raise click.ClickException(str(exc)) from exc


def run_backfill(data: LoadConfig, since: datetime | None) -> None:
    """Fetch the history window by window and merge it into the dataset; stop (exit 1) when a
    window is unfinished, before any training: running it again resumes there."""
    from visionzero.data.backfill import HISTORY_START, backfill

    report = backfill(data, since.date() if since else HISTORY_START, progress=click.echo)
    for line in report.lines():
        click.echo(line)
    if report.failed or report.unfetched:
        raise click.ClickException("the backfill is unfinished: run it again to resume")


def training_data_config(config_path: Path) -> LoadConfig:
    """The whole training configuration checked (a bad key stops the run before an hour of
    backfill, not after it); its data section."""
    return checked(pipeline_module("training").load_training_config, config_path).data


def data_config(config_path: Path) -> LoadConfig:
    """Only the configuration's data section, checked, the error naming the key: all the
    backfill reads, without loading ZenML and the model libraries (seconds, not half a minute)."""
    import yaml
    from pydantic import ValidationError

    from visionzero.data.dataset import LoadConfig

    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
        return LoadConfig.model_validate((raw.get("parameters") or {}).get("data") or {})
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{config_path}: not valid YAML ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(["parameters", "data", *(str(part) for part in first["loc"])])
        raise click.ClickException(f"{config_path}: {key}: {first['msg']}") from exc


def checked_config(load: Callable[[Path], T], config_path: Path, offline: bool) -> T:
    """What every pipeline run does before it starts: its configuration validated (a bad key
    stops it with the key's name), the network forbidden when offline, the stack in place."""
    params = checked(load, config_path)
    if offline:
        from visionzero.platform.offline import forbid_network

        forbid_network()
    stack_in_place()
    return params


def step_names() -> set[str]:
    """Every step the project defines (steps/<stage>/), by the name a pipeline invokes it by."""
    import pkgutil

    from zenml.steps import BaseStep

    import steps

    names = set()
    for stage in pkgutil.iter_modules(steps.__path__):
        module = importlib.import_module(f"steps.{stage.name}")
        names.update(obj.name for obj in vars(module).values() if isinstance(obj, BaseStep))
    return names


def on_configured_orchestrator(pipeline: T, **params: Any) -> T:
    """The pipeline as the settings run it: as it is by default; with VZ_ORCHESTRATOR=kubernetes,
    with the checked run settings of configs/kubernetes.yaml (a wrong key stops the run here)."""
    current = settings()
    if current.vz_orchestrator != "kubernetes":
        return pipeline
    from visionzero.platform.cluster import InvalidClusterConfig, cluster_run_options

    traced = pipeline.with_options()
    traced.prepare(**params)  # its step invocations, without running anything
    try:
        options = cluster_run_options(current, set(traced.invocations), step_names())
    except InvalidClusterConfig as exc:
        raise click.ClickException(str(exc)) from exc
    return pipeline.with_options(**options)


def run_pipeline(
    pipeline: Pipeline, params: TrainingParameters | MonitoringParameters, offline: bool
) -> PipelineRunResponse:
    """Run `pipeline` with every parameter of the checked `params`, the data offline when asked,
    onto the configured deploy target; the run it made (not "the newest run", maybe another's)."""
    data = params.data.model_copy(update={"offline": offline or params.data.offline})
    arguments = {**dict(params), "data": data, "deploy_target": settings().vz_deploy_target}
    return on_configured_orchestrator(pipeline, **arguments)(**arguments)


def train(offline: bool, config_path: Path) -> PipelineRunResponse:
    """Validate the run configuration first, then run the pipeline on the project's stack; the
    run it made (what its closing summary reads: not "the newest run", maybe another one's)."""
    training = pipeline_module("training")
    params = checked_config(training.load_training_config, config_path, offline)
    return run_pipeline(training.training_pipeline, params, offline)


def echo_training_summary(run: PipelineRunResponse) -> None:
    """Close a training run with its decision, what serves now and the command to run next."""
    from visionzero.rollout.deployment_state import read_state
    from visionzero.status import training_outputs, training_summary

    decision, deployment = training_outputs(run.id)
    click.echo(f"\nRun {run.name}")
    click.echo(training_summary(decision, deployment, read_state()))


def run_monitoring(offline: bool, config_path: Path) -> bool:
    """Validate the configuration, run the monitoring pipeline, print its verdicts; True when
    the retrain trigger fired."""
    monitoring = pipeline_module("monitoring")
    params = checked_config(monitoring.load_monitoring_config, config_path, offline)
    run = run_pipeline(monitoring.monitoring_pipeline, params, offline)
    from visionzero.status import monitoring_outputs

    canary, drift_flags, retrain = monitoring_outputs(run.id)  # this run's, not another's
    click.echo(f"\nCanary: {canary.action} ({canary.outcome or '-'})")
    for reason in canary.reasons:
        click.echo(f"  - {reason}")
    click.echo(f"Drift flags: {', '.join(drift_flags) or 'none'}")
    click.echo(f"Retrain: {'yes' if retrain.retrain else 'no'}")
    for reason in retrain.reasons:
        click.echo(f"  - {reason}")
    return retrain.retrain


def monitor_then_retrain(offline: bool, monitor_config: Path, training_config: Path) -> None:
    """`run.py monitor`: the monitoring run, then training when its retrain trigger fired."""
    if run_monitoring(offline, monitor_config):
        click.echo("Retraining: the training pipeline runs now")
        echo_training_summary(train(offline, training_config))


def train_with_backfill(
    offline: bool, config_path: Path, with_backfill: bool, since: datetime | None
) -> None:
    """`run.py` without a sub-command: the backfill first when asked, then training."""
    if with_backfill:
        run_backfill(training_data_config(config_path), since)
    echo_training_summary(train(offline, config_path))
