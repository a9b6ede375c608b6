"""Five risk levels cut on the predicted expected rate at quintiles of the training zone-slots."""

from __future__ import annotations

import numpy as np

RISK_LEVELS = ["Safe", "Somewhat Safe", "Average", "Somewhat Dangerous", "Dangerous"]
QUINTILES = [0.2, 0.4, 0.6, 0.8]


def level_thresholds(expected: np.ndarray) -> list[float]:
    """Four increasing cut points.

    Observed counts are mostly zero, so cut predictions, not outcomes.
    """
    cuts = np.quantile(np.asarray(expected, dtype=float), QUINTILES)
    if not np.all(np.diff(cuts) > 0):
        raise ValueError(f"level thresholds do not increase: {cuts.tolist()}")
    return [float(c) for c in cuts]


def assign_levels(expected: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Index 0..4 into RISK_LEVELS: a value equal to a cut point belongs to the level above it."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(expected, dtype=float), side="right")


def p_at_least_one(expected: np.ndarray) -> np.ndarray:
    """Poisson probability of one or more crashes in the slot."""
    return 1.0 - np.exp(-np.asarray(expected, dtype=float))
