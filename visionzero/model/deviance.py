"""The Poisson deviance that tuning (CV score) and evaluation (holdout, backtest) all report."""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

# A zero forecast would make the deviance infinite for any crash: floor every predictor alike.
MU_FLOOR = 1e-4


def unit_poisson_deviance(y: np.ndarray, mu: np.ndarray, floor: float = MU_FLOOR) -> np.ndarray:
    """Poisson deviance of each count y under its forecast mu (mu floored at `floor`): summed
    per day, it lets the evaluation bootstrap days without recomputing anything."""
    y = np.asarray(y, dtype=float)
    mu = np.maximum(np.asarray(mu, dtype=float), floor)
    return 2.0 * (xlogy(y, y / mu) - y + mu)


def poisson_deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """Mean Poisson deviance of counts y under forecasts mu, mu floored at MU_FLOOR."""
    return float(np.mean(unit_poisson_deviance(y, mu)))
