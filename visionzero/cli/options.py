"""The options more than one command declares, each made one way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Any], Any]


def config_file_option(name: str, default: Path, help_text: str) -> Decorator:
    """`--config FILE`: a run configuration (YAML) that must exist, passed as `name`."""
    file = click.Path(exists=True, dir_okay=False, path_type=Path)
    return click.option(
        "--config", name, type=file, default=default, show_default=True, help=help_text
    )


def since_option(help_text: str) -> Decorator:
    """`--since YYYY-MM-DD`: the first day a backfill fetches."""
    return click.option(
        "--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help=help_text
    )
