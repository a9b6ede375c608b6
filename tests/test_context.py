"""The model context on small hand-made frames: history counts, borough votes, season cuts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from visionzero.model.context import ModelContext, majority_borough, season_cuts

CELL_A = "892a100d2c3ffff"  # Manhattan, resolution 9
CELL_B = "892a1072b5bffff"


def test_majority_borough_ignores_missing_and_breaks_ties_by_name() -> None:
    zones = np.array(["z1", "z1", "z1", "z2", "z2", "z3"], dtype=object)
    boroughs = pd.Series(["QUEENS", None, "QUEENS", "BROOKLYN", "BRONX", None], dtype="string")
    assert majority_borough(zones, boroughs) == {"z1": "QUEENS", "z2": "BRONX"}


def test_season_compares_a_month_with_its_neighbours_only() -> None:
    days = pd.date_range("2024-01-01", "2024-12-31")
    volume = pd.Series(np.where(days.month.isin([6, 7, 8]), 300.0, 100.0), index=days)
    cuts = season_cuts(volume)
    assert cuts["7"] == [300.0] * 4  # June, July, August only
    assert cuts["1"] == [100.0] * 4  # December, January, February
    assert 100.0 < cuts["5"][-1] <= 300.0  # May's season takes in June


def test_history_counts_timed_training_crashes_per_zone_and_block() -> None:
    crashes = pd.DataFrame(
        {
            "crash_date": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02", "2024-02-01"]),
            "cell": [CELL_A, CELL_A, CELL_B, CELL_A],
            "block": [2, 2, -1, 5],  # the untimed crash and the one after training don't count
            "borough": pd.Series(["MANHATTAN"] * 4, dtype="string"),
        }
    )
    days = pd.DatetimeIndex(pd.to_datetime(["2024-01-01", "2024-01-02"]))
    volume = pd.Series(1.0, index=pd.date_range("2024-01-01", periods=365))
    context = ModelContext.build(crashes, days, [7, 9], 6, volume)
    assert context.history[CELL_A] == [0, 0, 2, 0, 0, 0]
    assert CELL_B not in context.history
    assert context.history["872a100d2ffffff"] == [0, 0, 2, 0, 0, 0]  # CELL_A's resolution-7 parent
    assert context.history_days == ["2024-01-01", "2024-01-02"] and context.history_day_count == 2
    assert context.boroughs["features"] == []  # too few crashes to vote for an outline
