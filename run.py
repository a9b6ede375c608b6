"""Vision Zero Risk command line: train, inspect, serve, promote and roll back."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from visionzero.platform.output import configure_output
from visionzero.platform.settings import REPO_ROOT, configure_environment, settings

if TYPE_CHECKING:
    from zenml.models import PipelineRunResponse

    from visionzero.data.dataset import LoadConfig

T = TypeVar("T")

DEFAULT_CONFIG = REPO_ROOT / "configs" / "training.yaml"
MONITORING_CONFIG = REPO_ROOT / "configs" / "monitoring.yaml"


@click.group(invoke_without_command=True)
@click.option("--offline", is_flag=True, help="Never touch the network: use the bundled snapshot.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Pipeline run configuration (YAML).",
)
@click.option(
    "--backfill",
    "with_backfill",
    is_flag=True,
    help="First fetch the whole history through the Socrata API (resumable), then train.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="First day the backfill fetches (default: 2012-07-01, the dataset's first day).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    offline: bool,
    config_path: Path,
    with_backfill: bool,
    since: datetime | None,
) -> None:
    """Without a sub-command: run the training pipeline (after the backfill with --backfill)."""
    configure_environment()
    configure_output()
    from visionzero.platform.stack import repoint_moved_stores

    moved = repoint_moved_stores()  # a copied or moved project: before anything opens a store
    if moved:
        click.echo(moved, err=True)  # stderr: `status --json` stays JSON
    if (with_backfill or since) and ctx.invoked_subcommand is not None:
        raise click.UsageError("--backfill and --since go before training, not a sub-command")
    if since and not with_backfill:
        raise click.UsageError("--since goes with --backfill")
    if with_backfill and offline:
        raise click.UsageError("--backfill fetches from the API: it cannot run --offline")
    local_only = ("dashboard", "render-k8s", "config", "schedule", "stack", "backfill")
    if ctx.invoked_subcommand not in local_only:
        from visionzero.platform.stack import ensure_local_server

        ensure_local_server()
    if ctx.invoked_subcommand is None:
        if with_backfill:
            run_backfill(training_data_config(config_path), since)
        echo_training_summary(train(offline, config_path))


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
    from visionzero.platform.stack import initialise_store

    initialise_store()  # before pipelines.training: importing it touches the store
    from pipelines.training import InvalidConfig, load_training_config

    try:
        return load_training_config(config_path).data
    except InvalidConfig as exc:
        raise click.ClickException(str(exc)) from exc


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


@cli.command("backfill")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="First day to fetch (default: 2012-07-01, the dataset's first day).",
)
@click.pass_context
def backfill_command(ctx: click.Context, since: datetime | None) -> None:
    """Only the backfill of `--backfill`: fetch the whole history through the Socrata API in
    monthly windows (resumable), merge it into data/ and version it with DVC; no training."""
    run_backfill(data_config(ctx.parent.params["config_path"]), since)


def checked_config(load: Callable[[Path], T], config_path: Path, offline: bool) -> T:
    """What every pipeline run does before it starts: its configuration validated (a bad key
    stops it with the key's name), the network forbidden when offline, the stack in place."""
    from pipelines.training import InvalidConfig

    try:
        params = load(config_path)
    except InvalidConfig as exc:
        raise click.ClickException(str(exc)) from exc
    if offline:
        from visionzero.platform.offline import forbid_network

        forbid_network()
    stack_in_place()
    return params


def stack_in_place() -> None:
    """The stack the settings name, registered and active; a cluster stack the settings cannot
    make (a missing server, a wrong URI) stops the command in one line naming the variables."""
    from visionzero.platform.stack import StackConfigError, ensure_stack

    try:
        ensure_stack()
    except StackConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def step_names() -> set[str]:
    """Every step the project defines (steps/<stage>/), by the name a pipeline invokes it by."""
    import importlib
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


def train(offline: bool, config_path: Path) -> PipelineRunResponse:
    """Validate the run configuration first, then run the pipeline on the project's stack; the
    run it made (what its closing summary reads: not "the newest run", maybe another one's)."""
    from visionzero.platform.stack import initialise_store

    initialise_store()  # before pipelines.training: importing it touches the store
    from pipelines.training import load_training_config, training_pipeline

    params = checked_config(load_training_config, config_path, offline)
    arguments = dict(
        data=params.data.model_copy(update={"offline": offline or params.data.offline}),
        model=params.model,
        tuning=params.tuning,
        evaluation=params.evaluation,
        decision=params.decision,
        deploy_target=settings().vz_deploy_target,
    )
    return on_configured_orchestrator(training_pipeline, **arguments)(**arguments)


@cli.command()
@click.option("--offline", is_flag=True, help="Never touch the network: use the data held.")
@click.option(
    "--config",
    "monitor_config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=MONITORING_CONFIG,
    show_default=True,
    help="Monitoring run configuration (YAML).",
)
@click.pass_context
def monitor(ctx: click.Context, offline: bool, monitor_config: Path) -> None:
    """Judge the serving models by what happened: forward evaluation, traffic, health, drift, the
    canary decision (carried out) and the retrain trigger (runs the training pipeline)."""
    offline = offline or ctx.parent.params["offline"]
    retrain = run_monitoring(offline, monitor_config)
    if retrain:
        click.echo("Retraining: the training pipeline runs now")
        echo_training_summary(train(offline, ctx.parent.params["config_path"]))


def run_monitoring(offline: bool, config_path: Path) -> bool:
    """Validate the configuration, run the monitoring pipeline, print its verdicts; True when
    the retrain trigger fired."""
    from visionzero.platform.stack import initialise_store

    initialise_store()  # before pipelines.monitoring: importing it touches the store
    from pipelines.monitoring import load_monitoring_config, monitoring_pipeline

    params = checked_config(load_monitoring_config, config_path, offline)
    arguments = dict(
        data=params.data.model_copy(update={"offline": offline or params.data.offline}),
        forward=params.forward,
        traffic=params.traffic,
        drift=params.drift,
        canary=params.canary,
        retrain=params.retrain,
        act=params.act,
        deploy_target=settings().vz_deploy_target,
    )
    run = on_configured_orchestrator(monitoring_pipeline, **arguments)(**arguments)
    from visionzero.status import monitoring_outputs

    summary = monitoring_outputs(run.id)  # this run's verdicts, not another monitor's
    canary, retrain = summary["canary"], summary["retrain"]
    click.echo(f"\nCanary: {canary.get('action')} ({canary.get('outcome') or '-'})")
    for reason in canary.get("reasons", []):
        click.echo(f"  - {reason}")
    click.echo(f"Drift flags: {', '.join(summary.get('drift_flags') or []) or 'none'}")
    click.echo(f"Retrain: {'yes' if retrain.get('retrain') else 'no'}")
    for reason in retrain.get("reasons", []):
        click.echo(f"  - {reason}")
    return bool(retrain.get("retrain"))


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """The effective training configuration: the YAML's values over the typed defaults."""
    import yaml

    from visionzero.platform.stack import initialise_store

    initialise_store()  # before pipelines.training: importing it touches the store
    from pipelines.training import InvalidConfig, load_training_config

    path = ctx.parent.params["config_path"]
    try:
        params = load_training_config(path)
    except InvalidConfig as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"# {path}, with every default filled in")
    click.echo(yaml.safe_dump({"parameters": params.model_dump()}, sort_keys=False).rstrip())


def echo_training_summary(run: PipelineRunResponse) -> None:
    """Close a training run with its decision, what serves now and the command to run next."""
    from visionzero.rollout.deployment_state import read_state
    from visionzero.status import training_outputs, training_summary

    decision, deployment = training_outputs(run.id)
    click.echo(f"\nRun {run.name}")
    click.echo(training_summary(decision, deployment, read_state()))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """What the project holds now: data version, models, deployments."""
    from visionzero.status import collect_status, format_status

    state = collect_status()
    if as_json:
        click.echo(json.dumps(state, indent=2, default=str))
    else:
        click.echo(format_status(state))


@cli.command()
def report() -> None:
    """The newest model's evaluation: every resolution, holdout and backtest, with intervals."""
    from zenml.client import Client

    from visionzero.evaluation.plots import markdown_table
    from visionzero.platform.settings import MODEL_NAME

    stack_in_place()
    try:
        version = Client().get_model_version(MODEL_NAME)
    except KeyError as exc:  # ZenML's answer when the model has no version yet
        raise click.ClickException("no model yet: run `make run` first") from exc
    artifact = version.get_artifact("evaluation_report")
    if artifact is None:
        raise click.ClickException(f"model version {version.number} has no evaluation report")
    meta = version.run_metadata
    click.echo(f"model version {version.number}, data {meta.get('data_version')}")
    for line in markdown_table(artifact.load()):
        click.echo(line)
    decision = meta.get("decision") or {}
    click.echo(f"decision: {decision.get('action')}")
    for reason in decision.get("reasons", []):
        click.echo(f"  - {reason}")


@cli.command()
@click.option("--port", default=3000, show_default=True, help="Port nginx listens on (localhost).")
@click.option(
    "--monitor", is_flag=True, help="Also run Prometheus scraping both stages (every 5 s)."
)
def serve(port: int, monitor: bool) -> None:
    """Serve production (and staging, 50/50) behind nginx on localhost:PORT until Ctrl-C."""
    from visionzero.platform.processes import stopping_on_signals
    from visionzero.rollout.deployment_state import NoProduction, state_path
    from visionzero.rollout.local_canary import CanaryError, LocalCanary
    from visionzero.rollout.serve_record import serve_record_path

    canary = LocalCanary(port, state_path(), serve_record_path(), monitor=monitor)
    failure = None
    with stopping_on_signals():  # SIGTERM too: stop() below runs on every way out
        try:
            canary.check()  # before anything starts: one line, no "stopped"
        except (CanaryError, NoProduction) as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            canary.start()
            click.echo(f"Serving on http://127.0.0.1:{port}  {json.dumps(canary.describe())}")
            if canary.prometheus_url:
                click.echo(f"Prometheus on {canary.prometheus_url} (scrapes both stages every 5 s)")
            click.echo(f"Risk map: http://localhost:{port}/  API: http://localhost:{port}/docs")
            click.echo("POST /predict, GET /metadata; Ctrl-C stops nginx and both model servers.")
            canary.watch()
        except (CanaryError, NoProduction) as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            pass
        finally:
            canary.stop()
            click.echo("stopped")
    if failure:
        raise click.ClickException(failure)


def _rollout_command(kind: str) -> None:
    from visionzero.platform.alerts import build_message, send
    from visionzero.rollout.actions import promote_or_rollback
    from visionzero.rollout.backend import CanaryError

    stack_in_place()
    try:
        result = promote_or_rollback(kind, settings().vz_deploy_target)
    except CanaryError as exc:  # nothing changed; promote_or_rollback alerted
        raise click.ClickException(str(exc)) from exc
    if result.changed:
        production = result.state.production
        send(
            build_message(
                kind,
                f"Crash-risk model: {kind}",
                {
                    "production version": production.model_version,
                    "bento": production.bento_tag,
                    "staging": "none",
                },
                [result.summary],
            )
        )
    click.echo(json.dumps(result.model_dump(mode="json", exclude={"state"}, exclude_none=True)))


@cli.command()
def promote() -> None:
    """Staging becomes production: canary removed, 100% to the new production."""
    _rollout_command("promote")


@cli.command()
def rollback() -> None:
    """100% of traffic back to the previous production."""
    _rollout_command("rollback")


@cli.command()
@click.option("--resend", is_flag=True, help="Send every undelivered message once.")
def alerts(resend: bool) -> None:
    """The alert outbox: each kept message with its id and delivery status. --resend sends the
    undelivered ones to DISCORD_WEBHOOK_URL, marks each delivered one, keeps the failed ones."""
    from visionzero.platform.alerts import DELIVERED, NoWebhook, outbox_entries
    from visionzero.platform.alerts import resend as resend_outbox

    results: dict[str, str] = {}
    if resend:
        try:
            results = resend_outbox()
        except NoWebhook as exc:
            raise click.ClickException(str(exc)) from exc
    for entry in outbox_entries():
        if not resend or entry["id"] in results:
            click.echo(f"{entry['id']}  {entry['at']}  {entry['delivery']:<24}  {entry['title']}")
    if resend:
        failed = sum(status != DELIVERED for status in results.values())
        click.echo(f"resent {len(results)}: {len(results) - failed} delivered, {failed} kept")
        sys.exit(1 if failed else 0)


@cli.command()
@click.option("--print", "print_", is_flag=True, help="Print the crontab lines.")
def schedule(print_: bool) -> None:
    """Crontab lines that run monitoring daily and training weekly on this machine, never both at
    once. Install: (crontab -l; python run.py schedule --print) | crontab -"""
    from visionzero.monitoring.schedule import crontab_lines
    from visionzero.platform.settings import paths

    if not print_:
        raise click.UsageError("nothing is installed for you: run with --print and add the lines")
    for line in crontab_lines(paths().home):
        click.echo(line)


@cli.command("stack")
@click.option("--print", "print_", is_flag=True, help="Print the registration script.")
def show_stack(print_: bool) -> None:
    """The cluster stack of VZ_ORCHESTRATOR=kubernetes, as a shell script that registers it by hand
    (`python run.py` registers it by itself). Secrets appear as $VARIABLES, never as values."""
    from visionzero.platform.stack import StackConfigError, cluster_recipe, register_script

    if not print_:
        raise click.UsageError("nothing is registered for you: run with --print")
    try:
        click.echo(register_script(cluster_recipe()), nl=False)
    except StackConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command("render-k8s")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def render_k8s(out_dir: Path) -> None:
    """Render the Kubernetes manifests of the current deployment state into OUT."""
    from visionzero.rollout.deployment_state import NoProduction, read_state, require_production
    from visionzero.rollout.kubernetes import render

    state = read_state()
    try:
        require_production(state)
    except NoProduction as exc:
        raise click.ClickException(str(exc)) from exc
    files = render(state, out_dir)
    click.echo(f"{len(files)} manifests written to {out_dir}")


@cli.command()
@click.option("--port", default=8237, show_default=True)
@click.option("--stop", is_flag=True, help="Stop the local server (back to the local store).")
def dashboard(port: int, stop: bool) -> None:
    """Start the local ZenML server and dashboard, and print its URL (or stop it)."""
    import subprocess

    zenml = str(Path(sys.executable).parent / "zenml")
    if stop:  # run with the project's ZENML_CONFIG_PATH, set by cli(): a bare `zenml` has another
        sys.exit(subprocess.call([zenml, "logout", "--local"]))

    stack_in_place()
    code = subprocess.call([zenml, "login", "--local", "--port", str(port)])
    if code == 0:
        click.echo(
            f"ZenML dashboard: http://127.0.0.1:{port}/projects/default/runs  "
            "(stop it with `python run.py dashboard --stop`)"
        )
    sys.exit(code)


@cli.command("mlflow-ui")
@click.option("--port", default=5000, show_default=True, help="Port on 127.0.0.1.")
def mlflow_ui(port: int) -> None:
    """The MLflow UI on the project's tracking store (trials, metrics, registry) until Ctrl-C."""
    import subprocess

    from visionzero.platform.output import MLFLOW_UI_WARNINGS
    from visionzero.platform.processes import Child, stopping_on_signals
    from visionzero.platform.registry import mlflow_tracking_uri

    stack_in_place()
    uri = mlflow_tracking_uri()
    if not uri.startswith(("sqlite:", "file:")):
        click.echo(f"The MLflow tracker logs to {uri}: open its UI there.")
        return
    mlflow = str(Path(sys.executable).parent / "mlflow")
    argv = [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    # One worker is plenty for one user and starts fastest; stopped like serve's children.
    argv += ["--workers", "1"]
    env = {**os.environ, "PYTHONWARNINGS": MLFLOW_UI_WARNINGS}
    code = None
    with stopping_on_signals():  # SIGTERM, like Ctrl-C, reaches the finally block
        child = Child("mlflow", subprocess.Popen(argv, start_new_session=True, env=env))
        click.echo(f"MLflow UI on http://127.0.0.1:{port}  ({uri}); Ctrl-C stops it.")
        try:
            code = child.process.wait()  # mlflow exiting by itself (port taken) keeps its code
        except KeyboardInterrupt:
            pass
        finally:
            if child.process.poll() is None:
                child.stop()
                click.echo("stopped")
    if code is not None:
        sys.exit(code)


if __name__ == "__main__":
    cli()
