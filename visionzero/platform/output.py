"""Console output of run.py: plain text off a terminal, and known harmless notices dropped.

Run before ZenML or MLflow is imported: both read these settings when they load.
"""

from __future__ import annotations

import logging
import os
import sys

from visionzero.platform.settings import settings

# (logger, start of the message): notices that are harmless in this project. Only these exact
# notices are dropped; every other warning and error of those loggers still shows.
HARMLESS_NOTICES: tuple[tuple[str, str], ...] = (
    # MLflow 3 has no fastai flavour any more, so there is no fastai autologging to switch off.
    (
        "zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker",
        "Failed to disable MLflow autologging for the following frameworks: ['fastai'].",
    ),
    # The open-source dashboard has no Models page; the README says where model versions are.
    (
        "zenml.orchestrators.step_run_utils",
        "Models can be viewed in the dashboard using ZenML Pro.",
    ),
    # Advice to run `zenml login --local`: here it is `python run.py dashboard`.
    (
        "zenml.pipelines.pipeline_definition",
        "You can visualize your pipeline runs in the `ZenML Dashboard`.",
    ),
    # A new store starts on the default stack; ensure_stack() activates the project's right after.
    ("zenml.zen_stores.base_zen_store", "Setting the global active stack to default."),
    # urllib3 announces each retry; the loader reports the final outcome once (a warning).
    ("urllib3.connectionpool", "Retrying ("),
)

# `mlflow ui` workers warn that MLflow imports Starlette's deprecated WSGI middleware: MLflow's
# business, not the user's (a PYTHONWARNINGS filter, set for that process only).
MLFLOW_UI_WARNINGS = "ignore:starlette.middleware.wsgi is deprecated"


class DropNotices(logging.Filter):
    """Drops the records of one logger whose message starts with one of the given texts."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def colours_wanted(stream: object = None, no_color: str | None = None) -> bool:
    """Colour codes only on a terminal, and never with NO_COLOR set (no-color.org)."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not no_color and bool(isatty and isatty())


def configure_output() -> None:
    """Environment and logging filters for quiet, plain output; a user's own settings win."""
    if not colours_wanted(no_color=settings().no_color):
        os.environ.setdefault("ZENML_LOGGING_COLORS_DISABLED", "true")
    # MLflow's INFO lines here are only its database migrations on a new store.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, prefix in HARMLESS_NOTICES:
        by_logger[name] = by_logger.get(name, ()) + (prefix,)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotices) for f in logger.filters):
            logger.addFilter(DropNotices(prefixes))
