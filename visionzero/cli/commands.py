"""What each command of `run.py` besides the pipeline runs does: inspect (config, status, report,
alerts), serve and change what serves (serve, promote, rollback), and the local tools (schedule,
stack, render-k8s, dashboard, mlflow-ui). Each prints its lines and ends with its exit code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from visionzero.cli.runs import checked, pipeline_module
from visionzero.cli.startup import stack_in_place
from visionzero.platform.settings import settings


def show_config(config_path: Path) -> None:
    """The effective training configuration: the YAML's values over the typed defaults."""
    import yaml

    params = checked(pipeline_module("training").load_training_config, config_path)
    click.echo(f"# {config_path}, with every default filled in")
    click.echo(yaml.safe_dump({"parameters": params.model_dump()}, sort_keys=False).rstrip())


def status(as_json: bool) -> None:
    """What the project holds now, as text or JSON."""
    from visionzero.status import collect_status, format_status

    state = collect_status()
    if as_json:
        click.echo(json.dumps(state, indent=2, default=str))
    else:
        click.echo(format_status(state))


def report() -> None:
    """The newest model version's evaluation report and its decision."""
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


def serve(port: int, monitor: bool) -> None:
    """The local canary on `port` until Ctrl-C or SIGTERM; stopped on every way out."""
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


def rollout(kind: str) -> None:
    """`promote` or `rollback` on the configured deploy target, its result as one JSON line;
    promote_or_rollback alerts a change and a refusal (nothing changed: exit 1)."""
    from visionzero.rollout.actions import promote_or_rollback
    from visionzero.rollout.backend import CanaryError

    stack_in_place()
    try:
        result = promote_or_rollback(kind, settings().vz_deploy_target, alert=True)
    except CanaryError as exc:  # nothing changed; promote_or_rollback alerted
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result.model_dump(mode="json", exclude={"state"}, exclude_none=True)))


def alerts(resend: bool) -> None:
    """The outbox listed; with `resend`, the undelivered ones sent (exit 1 when one fails)."""
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


def schedule(print_: bool) -> None:
    """The crontab lines, printed only: nothing is installed behind the user's back."""
    from visionzero.monitoring.schedule import crontab_lines
    from visionzero.platform.settings import paths

    if not print_:
        raise click.UsageError("nothing is installed for you: run with --print and add the lines")
    for line in crontab_lines(paths().home):
        click.echo(line)


def show_stack(print_: bool) -> None:
    """The cluster stack's registration script, printed only."""
    from visionzero.platform.stack_recipe import StackConfigError, cluster_recipe, register_script

    if not print_:
        raise click.UsageError("nothing is registered for you: run with --print")
    try:
        click.echo(register_script(cluster_recipe()), nl=False)
    except StackConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def render_k8s(out_dir: Path) -> None:
    """The manifests of the deployment state written into `out_dir`; none without production."""
    from visionzero.rollout.deployment_state import NoProduction, read_state, require_production
    from visionzero.rollout.kubernetes import render

    state = read_state()
    try:
        require_production(state)
    except NoProduction as exc:
        raise click.ClickException(str(exc)) from exc
    files = render(state, out_dir)
    click.echo(f"{len(files)} manifests written to {out_dir}")


def dashboard(port: int, stop: bool) -> None:
    """`zenml login --local` (or logout) with the project's ZenML configuration; its exit code."""
    import subprocess

    zenml = str(Path(sys.executable).parent / "zenml")
    if stop:  # run with the project's ZENML_CONFIG_PATH, set at start: a bare `zenml` has another
        sys.exit(subprocess.call([zenml, "logout", "--local"]))

    stack_in_place()
    code = subprocess.call([zenml, "login", "--local", "--port", str(port)])
    if code == 0:
        click.echo(
            f"ZenML dashboard: http://127.0.0.1:{port}/projects/default/runs  "
            "(stop it with `python run.py dashboard --stop`)"
        )
    sys.exit(code)


def mlflow_ui(port: int) -> None:
    """`mlflow ui` on the local tracking store until Ctrl-C or SIGTERM (or where a remote one is);
    stopped like serve's children; mlflow exiting by itself keeps its exit code."""
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
