"""The served-traffic view: which places and hours people ask about, and how well each stage's
served answers matched the crashes that followed on exactly those zone-slots.

The forward evaluation judges a model on every place; this view judges what people were told.
Each distinct asked zone-slot counts once per stage and model version (a zone asked a thousand
times is still one forecast), on complete days only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from visionzero.model.crash_risk import Prepared
from visionzero.model.grain import ancestors

UNKNOWN = "UNKNOWN"


class TrafficConfig(BaseModel):
    """Which logged requests the monitor reads (configs/monitoring.yaml `parameters.traffic`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lookback_days: int = Field(90, ge=1, description="requests of this many latest days are read")
    top_zones: int = Field(10, ge=1, description="res-7 zones listed as the most asked about")


class Calibration(BaseModel):
    """Served expected crashes against observed ones on the asked zone-slots of complete days."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    stage: str
    model_version: int | None
    requests: int
    zone_slots: int  # distinct asked (zone, date, block) on complete days
    predicted: float
    observed: float
    ratio: float | None  # predicted / observed; None without observed crashes


class TrafficReport(BaseModel):
    """The traffic_view artifact."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    requests: int
    window: list[str] | None  # first and last request time (UTC)
    by_stage: dict[str, int]
    by_resolution: dict[str, float]  # share of requests
    by_block: dict[str, float]
    by_borough: dict[str, float]
    top_zones: list[dict]  # res-7 zones most asked about: zone, borough, requests, share
    calibration: list[Calibration]


def shares(values: pd.Series) -> dict[str, float]:
    counts = values.value_counts(normalize=True).sort_index()
    return {str(key): round(float(share), 6) for key, share in counts.items()}


def observed_counts(prepared: Prepared, resolutions: list[int]) -> pd.DataFrame:
    """Timed crashes per (zone, resolution, date, block) of the complete days, at each
    resolution asked (a zone is the ancestor of the crash's finest cell, as everywhere)."""
    timed = prepared.crashes[prepared.crashes["block"] >= 0]
    parts = []
    for resolution in resolutions:
        counts = (
            pd.DataFrame(
                {
                    "zone": ancestors(timed["cell"].to_numpy(), resolution),
                    "date": timed["crash_date"].to_numpy(),
                    "block": timed["block"].to_numpy(),
                }
            )
            .groupby(["zone", "date", "block"])
            .size()
            .rename("observed")
            .reset_index()
        )
        parts.append(counts.assign(resolution=resolution))
    if parts:
        return pd.concat(parts, ignore_index=True)
    # typed even when empty: no asked slot on a complete day must still merge on `date`
    dtypes = {"zone": object, "date": "datetime64[ns]", "block": "int64", "observed": "int64"}
    return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in dtypes.items()}).assign(
        resolution=pd.Series(dtype="int64")
    )


def calibration(predictions: pd.DataFrame, prepared: Prepared) -> list[Calibration]:
    """Per stage and model version: served expected vs observed crashes on its distinct asked
    zone-slots of complete days."""
    complete = pd.DatetimeIndex(prepared.days["date"])
    asked = predictions[predictions["date"].isin(complete)]
    keys = ["stage", "model_version", "zone", "resolution", "date", "block"]
    distinct = asked.drop_duplicates(keys)
    observed = observed_counts(prepared, sorted(int(r) for r in distinct["resolution"].unique()))
    joined = distinct.merge(
        observed.astype(
            {"block": distinct["block"].dtype, "resolution": distinct["resolution"].dtype}
        ),
        on=["zone", "resolution", "date", "block"],
        how="left",
    ).fillna({"observed": 0})
    out = []
    requests = predictions.groupby(["stage", "model_version"]).size()
    for (stage, version), rows in joined.groupby(["stage", "model_version"]):
        predicted, seen = float(rows["expected"].sum()), float(rows["observed"].sum())
        out.append(
            Calibration(
                stage=str(stage),
                model_version=int(version) if pd.notna(version) else None,
                requests=int(requests.get((stage, version), 0)),
                zone_slots=len(rows),
                predicted=predicted,
                observed=seen,
                ratio=predicted / seen if seen > 0 else None,
            )
        )
    return out


def traffic_view(
    predictions: pd.DataFrame | None,
    prepared: Prepared,
    zone_borough: dict[str, str],
    top: int = 10,
) -> TrafficReport:
    """Where and when people ask (res-7 zones and their majority borough, blocks, resolutions,
    stages) and each stage's calibration on what it answered. No log (None) reads as no
    requests."""
    if predictions is None or predictions.empty:
        return TrafficReport(
            requests=0,
            window=None,
            by_stage={},
            by_resolution={},
            by_block={},
            by_borough={},
            top_zones=[],
            calibration=[],
        )
    zone7 = pd.Series(ancestors(predictions["zone"].to_numpy(), 7), index=predictions.index)
    borough = zone7.map(zone_borough).fillna(UNKNOWN)
    most = zone7.value_counts().head(top)
    times = predictions["time"]
    return TrafficReport(
        requests=len(predictions),
        window=[str(times.min()), str(times.max())],
        by_stage={str(k): int(v) for k, v in predictions["stage"].value_counts().items()},
        by_resolution=shares(predictions["resolution"]),
        by_block=shares(predictions["block"]),
        by_borough=shares(borough),
        top_zones=[
            {
                "zone": zone,
                "borough": zone_borough.get(zone, UNKNOWN),
                "requests": int(count),
                "share": round(float(count) / len(predictions), 6),
            }
            for zone, count in most.items()
        ],
        calibration=calibration(predictions, prepared),
    )


def zone7_boroughs(prepared: Prepared) -> dict[str, str]:
    """Majority borough of each res-7 zone's crashes (crashes without a borough not counted)."""
    rows = prepared.crashes[prepared.crashes["borough"].notna()]
    zone7 = ancestors(rows["cell"].to_numpy(), 7)
    frame = pd.DataFrame({"zone": zone7, "borough": rows["borough"].astype(object).to_numpy()})
    counts = frame.groupby(["zone", "borough"]).size().reset_index(name="n")
    best = counts.sort_values(["zone", "n"], ascending=[True, False]).drop_duplicates("zone")
    return dict(zip(best["zone"], best["borough"], strict=True))


def reference_cells(prepared: Prepared) -> pd.DataFrame:
    """The timed crashes' finest cell, block and date: where and when crashes happened, which the
    request mix is compared with."""
    timed = prepared.crashes[prepared.crashes["block"] >= 0]
    return pd.DataFrame(
        {
            "cell": timed["cell"].to_numpy(),
            "block": timed["block"].to_numpy(np.int64),
            "crash_date": timed["crash_date"].to_numpy(),
        }
    )
