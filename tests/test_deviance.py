"""The one Poisson deviance shared by tuning and evaluation, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visionzero.model.deviance import MU_FLOOR, poisson_deviance


def test_known_value() -> None:
    # unit deviances 2*(y*log(y/mu) - y + mu): y=0,mu=0.5 -> 1; y=1,mu=1 -> 0; y=2,mu=1 -> 4*ln2 - 2
    expected = (1 + 0 + 4 * math.log(2) - 2) / 3
    assert poisson_deviance(np.array([0, 1, 2]), np.array([0.5, 1, 1])) == pytest.approx(expected)


def test_zero_forecast_is_floored() -> None:
    assert poisson_deviance(np.array([0.0]), np.array([0.0])) == pytest.approx(2 * MU_FLOOR)
    assert math.isfinite(poisson_deviance(np.array([3.0]), np.array([0.0])))
