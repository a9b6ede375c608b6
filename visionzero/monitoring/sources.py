"""The monitor's two outside sources, in one place: the prediction log the service writes and the
backends' operational metrics. The domain functions take their results as plain frames and models,
so they are tested without a running service.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from visionzero.monitoring.operational import StageHealth, stage_health


def served_predictions(since: date | None = None) -> pd.DataFrame | None:
    """Every logged /predict answer of every stage since `since`; None when no log exists (the
    service has not run with logging here)."""
    from visionzero.serving.prediction_log import prediction_log_root, read_predictions

    root = prediction_log_root()
    if root is None or not root.exists():
        return None
    return read_predictions(root, since=since)


def canary_health(window_minutes: int = 60) -> dict[str, StageHealth]:
    """Each stage's error rate and latency percentiles (Prometheus, else the backends'
    /metrics); raises MetricsUnavailable when no metrics source can be reached."""
    return stage_health(window_minutes)
