"""Vision Zero Risk command line: train, inspect, serve, promote and roll back."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
import yaml

from visionzero.settings import REPO_ROOT, configure_environment

DEFAULT_CONFIG = REPO_ROOT / "configs" / "training.yaml"


@click.group(invoke_without_command=True)
@click.option("--offline", is_flag=True, help="Never touch the network: use the bundled snapshot.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=DEFAULT_CONFIG, show_default=True, help="Pipeline run configuration (YAML).")
@click.pass_context
def cli(ctx: click.Context, offline: bool, config_path: Path) -> None:
    """Without a sub-command: run the training pipeline."""
    configure_environment()
    logging.getLogger("dvc").setLevel(logging.WARNING)
    if ctx.invoked_subcommand is None:
        train(offline, config_path)


def train(offline: bool, config_path: Path) -> None:
    from pipelines.training import training_pipeline
    from visionzero.stack import ensure_stack

    if offline:
        from visionzero.offline import forbid_network

        forbid_network()
    ensure_stack()
    config = yaml.safe_load(config_path.read_text()) or {}
    if os.environ.get("VZ_DEPLOY_TARGET"):
        config.setdefault("parameters", {})["deploy_target"] = os.environ["VZ_DEPLOY_TARGET"]
    config.setdefault("steps", {}).setdefault("data_loader", {}).setdefault("parameters", {})[
        "offline"] = offline
    training_pipeline.with_options(**config)()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """What the project holds now: data version, models, deployments."""
    from visionzero.status import collect_status

    state = collect_status()
    if as_json:
        click.echo(json.dumps(state, indent=2, default=str))
    else:
        for section, value in state.items():
            click.echo(f"{section}: {json.dumps(value, default=str)}")


@cli.command()
@click.option("--port", default=8237, show_default=True)
def dashboard(port: int) -> None:
    """Start the local ZenML server and dashboard, and print its URL."""
    import subprocess

    from visionzero.stack import ensure_stack

    ensure_stack()
    code = subprocess.call([sys.executable, "-m", "zenml.cli.cli", "login", "--local", "--port", str(port)])
    if code == 0:
        click.echo(f"ZenML dashboard: http://127.0.0.1:{port}  (stop it with `zenml logout --local`)")
    sys.exit(code)


if __name__ == "__main__":
    cli()
