"""The Poisson deviance that tuning (CV score) and evaluation (holdout) both report."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_poisson_deviance

# A zero forecast would make the deviance infinite for any crash: floor every predictor alike.
MU_FLOOR = 1e-4


def poisson_deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """Mean Poisson deviance of counts y under forecasts mu, mu floored at MU_FLOOR."""
    return float(mean_poisson_deviance(y, np.maximum(mu, MU_FLOOR)))
