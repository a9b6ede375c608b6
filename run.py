"""Vision Zero Risk command line: train, inspect, serve, promote and roll back (what each does:
visionzero/cli/)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from visionzero.cli import commands, runs
from visionzero.cli.options import config_file_option, since_option
from visionzero.cli.runs import DEFAULT_CONFIG, MONITORING_CONFIG, train
from visionzero.cli.startup import LocalCommand, start

__all__ = ["DEFAULT_CONFIG", "cli", "train"]  # tests train through run.py, as `make run` does


@click.group(invoke_without_command=True)
@click.option("--offline", is_flag=True, help="Never touch the network: use the bundled snapshot.")
@config_file_option("config_path", DEFAULT_CONFIG, "Pipeline run configuration (YAML).")
@click.option(
    "--backfill",
    is_flag=True,
    help="First fetch the whole history through the Socrata API (resumable), then train.",
)
@since_option("First day the backfill fetches (default: 2012-07-01, the dataset's first day).")
@click.pass_context
def cli(
    ctx: click.Context, offline: bool, config_path: Path, backfill: bool, since: datetime | None
) -> None:
    """Without a sub-command: run the training pipeline (after the backfill with --backfill)."""
    start(ctx, offline, backfill, since)
    if ctx.invoked_subcommand is None:
        runs.train_with_backfill(offline, config_path, backfill, since)


@cli.command("backfill", cls=LocalCommand)
@since_option("First day to fetch (default: 2012-07-01, the dataset's first day).")
@click.pass_context
def backfill_command(ctx: click.Context, since: datetime | None) -> None:
    """Only the backfill of `--backfill`: fetch the whole history through the Socrata API in
    monthly windows (resumable), merge it into data/ and version it with DVC; no training."""
    runs.run_backfill(runs.data_config(ctx.parent.params["config_path"]), since)


@cli.command()
@click.option("--offline", is_flag=True, help="Never touch the network: use the data held.")
@config_file_option("monitor_config", MONITORING_CONFIG, "Monitoring run configuration (YAML).")
@click.pass_context
def monitor(ctx: click.Context, offline: bool, monitor_config: Path) -> None:
    """Judge the serving models by what happened: forward evaluation, traffic, health, drift, the
    canary decision (carried out) and the retrain trigger (runs the training pipeline)."""
    offline = offline or ctx.parent.params["offline"]
    runs.monitor_then_retrain(offline, monitor_config, ctx.parent.params["config_path"])


@cli.command("config", cls=LocalCommand)
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """The effective training configuration: the YAML's values over the typed defaults."""
    commands.show_config(ctx.parent.params["config_path"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """What the project holds now: data version, models, deployments."""
    commands.status(as_json)


@cli.command()
def report() -> None:
    """The newest model's evaluation: every resolution, holdout and backtest, with intervals."""
    commands.report()


@cli.command()
@click.option("--port", default=3000, show_default=True, help="Port nginx listens on (localhost).")
@click.option(
    "--monitor", is_flag=True, help="Also run Prometheus scraping both stages (every 5 s)."
)
def serve(port: int, monitor: bool) -> None:
    """Serve production (and staging, 50/50) behind nginx on localhost:PORT until Ctrl-C."""
    commands.serve(port, monitor)


@cli.command()
def promote() -> None:
    """Staging becomes production: canary removed, 100% to the new production."""
    commands.rollout("promote")


@cli.command()
def rollback() -> None:
    """100% of traffic back to the previous production."""
    commands.rollout("rollback")


@cli.command()
@click.option("--resend", is_flag=True, help="Send every undelivered message once.")
def alerts(resend: bool) -> None:
    """The alert outbox: each kept message with its id and delivery status. --resend sends the
    undelivered ones to DISCORD_WEBHOOK_URL, marks each delivered one, keeps the failed ones."""
    commands.alerts(resend)


@cli.command(cls=LocalCommand)
@click.option("--print", "print_", is_flag=True, help="Print the crontab lines.")
def schedule(print_: bool) -> None:
    """Crontab lines that run monitoring daily and training weekly on this machine, never both at
    once. Install: (crontab -l; python run.py schedule --print) | crontab -"""
    commands.schedule(print_)


@cli.command("stack", cls=LocalCommand)
@click.option("--print", "print_", is_flag=True, help="Print the registration script.")
def show_stack(print_: bool) -> None:
    """The cluster stack of VZ_ORCHESTRATOR=kubernetes, as a shell script that registers it by hand
    (`python run.py` registers it by itself). Secrets appear as $VARIABLES, never as values."""
    commands.show_stack(print_)


@cli.command("render-k8s", cls=LocalCommand)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def render_k8s(out_dir: Path) -> None:
    """Render the Kubernetes manifests of the current deployment state into OUT."""
    commands.render_k8s(out_dir)


@cli.command(cls=LocalCommand)
@click.option("--port", default=8237, show_default=True)
@click.option("--stop", is_flag=True, help="Stop the local server (back to the local store).")
def dashboard(port: int, stop: bool) -> None:
    """Start the local ZenML server and dashboard, and print its URL (or stop it)."""
    commands.dashboard(port, stop)


@cli.command("mlflow-ui")
@click.option("--port", default=5000, show_default=True, help="Port on 127.0.0.1.")
def mlflow_ui(port: int) -> None:
    """The MLflow UI on the project's tracking store (trials, metrics, registry) until Ctrl-C."""
    commands.mlflow_ui(port)


if __name__ == "__main__":
    cli()
