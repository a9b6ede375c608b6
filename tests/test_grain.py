"""The model's grain: block arithmetic, zone mapping and zone checks on hand-picked values."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import xgboost as xgb

from visionzero.model.config import ModelConfig
from visionzero.model.crash_risk import CrashRiskModel
from visionzero.model.grain import Grain
from visionzero.model.shares import ShareTable

LOWER_MANHATTAN = (40.7128, -74.0060)
LOWER_MANHATTAN_R7 = "872a1072cffffff"
RESOLUTION_10_CELL = "8a2a1072b59ffff"


def test_four_hour_blocks() -> None:
    grain = Grain(resolution=7, block_hours=4)
    assert grain.n_blocks == 6
    assert grain.spans == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24)]
    assert grain.labels == ["00-04", "04-08", "08-12", "12-16", "16-20", "20-24"]


def test_other_block_lengths() -> None:
    assert Grain(7, 3).labels == [
        "00-03",
        "03-06",
        "06-09",
        "09-12",
        "12-15",
        "15-18",
        "18-21",
        "21-24",
    ]
    assert Grain(7, 24).spans == [(0, 24)]
    assert Grain(7, 1).n_blocks == 24 and Grain(7, 1).spans[-1] == (23, 24)


def test_block_of_minute_at_the_edges() -> None:
    # 4-hour blocks hold 240 minutes: 239 is the last minute of block 0, 240 the first of block 1.
    minutes = np.array([0, 239, 240, 719, 720, 1439])
    assert Grain(7, 4).block_of_minute(minutes).tolist() == [0, 0, 1, 2, 3, 5]
    assert Grain(7, 6).block_of_minute(minutes).tolist() == [0, 0, 0, 1, 2, 3]


@pytest.mark.parametrize("unit", ["m", "s", "ns"])
def test_block_of_datetime_in_any_unit(unit: str) -> None:
    stamps = np.array(
        [
            "2025-02-03T08:30",
            "2025-02-03T07:59",
            "2025-02-03T20:00",
            "2025-02-03T23:59",
            "1969-12-31T23:30",
        ],
        dtype=f"datetime64[{unit}]",
    )
    assert Grain(7, 4).block_of_datetime(stamps).tolist() == [2, 1, 5, 5, 5]


@pytest.mark.parametrize("block_hours", [0, -4, 5, 7, 25, 48])
def test_block_hours_must_divide_the_day(block_hours: int) -> None:
    with pytest.raises(ValueError, match="block_hours must divide 24"):
        Grain(7, block_hours)


@pytest.mark.parametrize("resolution", [-1, 16])
def test_resolution_must_be_an_h3_resolution(resolution: int) -> None:
    with pytest.raises(ValueError, match="H3 resolution"):
        Grain(resolution, 4)


def test_a_grain_is_a_value() -> None:
    assert Grain(7, 4) == Grain(7, 4) != Grain(8, 4)
    assert len({Grain(7, 4), Grain(7, 4)}) == 1
    with pytest.raises(FrozenInstanceError):
        Grain(7, 4).block_hours = 6  # type: ignore[misc]


def test_zones_of_points() -> None:
    lat, lon = LOWER_MANHATTAN
    zones = Grain(7, 4).zones_of(np.array([lat, np.nan, lat]), np.array([lon, lon, np.nan]))
    assert zones.tolist() == [LOWER_MANHATTAN_R7, "", ""]
    assert Grain(10, 4).zones_of(np.array([lat]), np.array([lon]))[0].startswith("8a2a1072")


def test_zones_of_a_point_nest_through_its_finest_cell() -> None:
    # Near this point the res-7 cell that contains it is not the parent of its res-9 cell (H3
    # nests by index, not in space): with `finest` the district is the block's ancestor, so a
    # block's crashes always count in its own district.
    lat, lon = np.array([40.73297]), np.array([-73.92116])
    assert Grain(7, 4).zones_of(lat, lon)[0] == "872a100c2ffffff"
    assert Grain(9, 4).zones_of(lat, lon)[0].startswith("892a100d5")
    assert Grain(7, 4).zones_of(lat, lon, finest=9)[0] == "872a100d5ffffff"
    assert Grain(9, 4).zones_of(lat, lon, finest=9)[0] == Grain(9, 4).zones_of(lat, lon)[0]


def test_config_and_saved_model_metadata_give_the_grain() -> None:
    assert ModelConfig(resolution=8, block_hours=6).grain == Grain(8, 6)
    shares = ShareTable(
        zones=[], p_block=np.zeros((3, 6)), p_zone=np.zeros((0, 6, 3)), unknown_zone_share=0.0
    )
    # The saved-model metadata keys (zone_resolution, block_hours) are unchanged.
    model = CrashRiskModel(
        booster=xgb.Booster(), shares=shares, meta={"zone_resolution": 7, "block_hours": 4}
    )
    assert model.grain == Grain(7, 4)
