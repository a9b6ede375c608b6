"""The two-stage crash-risk model: citywide daily volume (XGBoost, Poisson)
x zone-block share (history).

expected(zone, block, date) = volume(date) * P(block | day type) * P(zone | block, day type)

Day-level signal (weather, holidays, weekday, regime) lives in the volume stage; the share stage
(shares.py) is a recency-weighted, shrunken history of where and when crashes happen, computed on
training days only. Saved as XGBoost's native JSON plus a JSON metadata file: never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import xgboost as xgb

from visionzero.model import features as F
from visionzero.model.config import ModelConfig
from visionzero.model.context import SEASON_DAYS, ModelContext
from visionzero.model.grain import Grain, ancestors
from visionzero.model.hierarchy import ChildShares
from visionzero.model.levels import assign_levels, level_thresholds
from visionzero.model.shares import ShareTable, ZoneTable, fit_children

VOLUME_FILE = "volume.json"
META_FILE = "meta.json"
# The volume model's features grouped by what a person reads as a reason for a busy or quiet day.
DRIVERS = {
    "weekday": ["dow"],
    "holiday": ["is_holiday"],
    "season": ["month", "doy_sin", "doy_cos"],
    "trend": ["year_frac"],
    "weather": F.WEATHER_FIELDS,
}


@dataclass
class Prepared:
    """Complete-day data at the model's grain: one row per day, one row per observed zone-slot."""

    days: pd.DataFrame  # date, volume (geocoded crashes in the NYC box)
    slots: pd.DataFrame  # date, zone, block, count (timed, geocoded crashes)
    crashes: pd.DataFrame  # the complete-day crash rows with zone and block
    weather: pd.DataFrame


def prepare(
    crashes: pd.DataFrame, complete_days: pd.DataFrame, weather: pd.DataFrame, cfg: ModelConfig
) -> Prepared:
    days = pd.DatetimeIndex(complete_days["date"]).normalize().unique().sort_values()
    rows = crashes[crashes["crash_date"].isin(days) & crashes["geocoded"]].copy()
    grain = cfg.grain
    finest = Grain(cfg.finest_resolution, cfg.block_hours)
    rows["cell"] = finest.zones_of(rows["latitude"].to_numpy(), rows["longitude"].to_numpy())
    rows["zone"] = ancestors(rows["cell"].to_numpy(), grain.resolution)
    timed = rows["crash_minute"].notna().to_numpy()
    rows["block"] = -1
    rows.loc[timed, "block"] = grain.block_of_minute(rows.loc[timed, "crash_minute"].to_numpy(int))
    volume = rows.groupby("crash_date").size().reindex(days, fill_value=0)
    day_frame = pd.DataFrame({"date": days, "volume": volume.to_numpy()})
    slots = (
        rows[rows["block"] >= 0]
        .groupby(["crash_date", "zone", "block"])
        .size()
        .rename("count")
        .reset_index()
        .rename(columns={"crash_date": "date"})
    )
    return Prepared(days=day_frame, slots=slots, crashes=rows, weather=weather)


def split_days(days: pd.Series, holdout_days: int) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """Time-ordered split.

    The latest `holdout_days` complete days are the holdout, the rest train.
    """
    ordered = pd.DatetimeIndex(sorted(pd.DatetimeIndex(days)))
    if len(ordered) <= holdout_days:
        raise ValueError(f"only {len(ordered)} complete days; cannot hold out {holdout_days}")
    return ordered[:-holdout_days], ordered[-holdout_days:]


def volume_features(
    dates: pd.DatetimeIndex, weather: pd.DataFrame, clim: dict[str, list[float]]
) -> pd.DataFrame:
    X, _ = F.day_matrix(F.as_days(dates), F.recorded_weather(dates, weather), clim)
    return pd.DataFrame(X, columns=F.DAY_FEATURES)


def _daytypes(X: np.ndarray) -> np.ndarray:
    """Day type (weekday 0, Saturday 1, Sunday or holiday 2) of each row of a day matrix."""
    dow, holiday = X[:, F.DAY_FEATURES.index("dow")], X[:, F.DAY_FEATURES.index("is_holiday")]
    return F.daytype_of(dow, holiday)


@dataclass
class CrashRiskModel:
    booster: xgb.Booster
    shares: ShareTable
    meta: dict = field(default_factory=dict)
    children: list[ChildShares] = field(default_factory=list)  # finer resolutions, coarse first
    context: ModelContext | None = None  # for people-facing answers; None in older models
    # date (days since 1970) -> (citywide volume, day type) without recorded weather: serving's
    _day_cache: dict[int, tuple[float, int]] = field(default_factory=dict, repr=False)

    @cached_property
    def grain(self) -> Grain:
        """The zone and block size the model was trained at, from its saved metadata."""
        return Grain(int(self.meta["zone_resolution"]), int(self.meta["block_hours"]))

    @property
    def thresholds(self) -> list[float]:
        """The base resolution's level cuts."""
        return list(self.meta["thresholds"])

    @property
    def resolutions(self) -> list[int]:
        """Every H3 resolution the model answers at, coarse to fine."""
        return [self.grain.resolution] + [level.resolution for level in self.children]

    def thresholds_at(self, resolution: int) -> list[float]:
        """Level cuts of one resolution: a Dangerous block is rarer than a Dangerous district."""
        by_resolution = self.meta.get("thresholds_by_resolution") or {}
        return list(by_resolution.get(str(resolution), self.meta["thresholds"]))

    @cached_property
    def zone_table(self) -> ZoneTable:
        return ZoneTable.build(self.shares, self.children, self.grain.resolution)

    def zone_index(self, zones: np.ndarray) -> np.ndarray:
        """Row of each zone in the zone table, -1 for a zone outside every trained zone."""
        row_of = self.zone_table.row_of
        return np.array([row_of.get(z, -1) for z in zones], dtype=np.int64)

    def _share(self, zones: np.ndarray, blocks: np.ndarray, dtype: np.ndarray) -> np.ndarray:
        """P(block | day type) x P(zone | block, day type) at each zone's own resolution. A zone
        outside the trained ones gets the unknown-zone share split evenly down to its size."""
        rows = self.zone_index(zones)
        known = rows >= 0
        table = self.zone_table
        base = np.where(known, table.base_rows[rows], -1)
        factor = np.ones(len(rows))
        factor[known] = table.factor[rows[known], blocks[known]]
        if not known.all():
            depth = [h3.get_resolution(z) - self.grain.resolution for z in zones[~known]]
            factor[~known] = (1 / 7) ** np.maximum(np.array(depth, dtype=float), 0)
        return self.shares.share(base, blocks, dtype) * factor

    def expected(
        self,
        zones: np.ndarray,
        dates: object,
        blocks: np.ndarray,
        weather: pd.DataFrame | None = None,
        item_weather: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected crashes per zone-slot and the weather source of each ("request", "record",
        "climatology"). `item_weather` [n, fields] (NaN = not given) overrides recorded weather.
        Vectorised: the volume model runs once per distinct (date, weather)."""
        days = F.as_days(dates)
        known = F.recorded_weather(days, weather)
        key = [F.WEATHER_FIELDS.index(f) for f in ("prcp", "tmax", "tmin")]
        source = np.where(~np.isnan(known[:, key]).any(axis=1), "record", "climatology")
        if item_weather is not None:
            given = ~np.isnan(item_weather)
            known = np.where(given, item_weather, known)
            source = np.where(given.any(axis=1), "request", source)
        if weather is None and item_weather is None:
            volume, dtype = self._day_terms(days)
        else:
            if item_weather is None:  # one volume per distinct date: a 1-D unique is much cheaper
                _, first, inverse = np.unique(days, return_index=True, return_inverse=True)
            else:
                rows = np.column_stack([days.astype(np.float64), np.nan_to_num(known, nan=-1e300)])
                _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            X, _ = F.day_matrix(days[first], known[first], self.meta["climatology"])
            volume = self.booster.inplace_predict(X)[inverse]
            dtype = _daytypes(X)[inverse]
        share = self._share(np.asarray(zones, dtype=object), np.asarray(blocks, dtype=int), dtype)
        return volume * share, source

    def _day_terms(self, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Citywide volume and day type of each date without recorded weather. Neither ever
        changes for a date, so serving keeps them: most requests then skip the day features and
        XGBoost, whose per-call overheads dominate a small request (py-spy, issue #14)."""
        dates, inverse = np.unique(days, return_inverse=True)
        keys = dates.astype(np.int64).tolist()
        missing = [key for key in keys if key not in self._day_cache]
        if missing:
            if len(self._day_cache) + len(missing) > 50_000:
                self._day_cache.clear()
                missing = keys
            fresh = np.array(missing, dtype="datetime64[D]")
            X, _ = F.day_matrix(fresh, F.recorded_weather(fresh, None), self.meta["climatology"])
            volumes, kinds = self.booster.inplace_predict(X).tolist(), _daytypes(X).tolist()
            self._day_cache.update(zip(missing, zip(volumes, kinds, strict=True), strict=True))
        volume, dtype = zip(*[self._day_cache[key] for key in keys], strict=True)
        inverse = inverse.reshape(-1)
        return np.array(volume)[inverse], np.array(dtype)[inverse]

    def day_volumes(
        self, days: np.ndarray, weather: pd.DataFrame | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Citywide expected crashes of each day, the multiplicative effect of each DRIVERS group
        against the model's average day (XGBoost's exact tree contributions: a Poisson model
        adds them on the log scale) and the weather source of each day."""
        days = F.as_days(days)
        X, filled = F.day_matrix(days, F.recorded_weather(days, weather), self.meta["climatology"])
        matrix = xgb.DMatrix(X, feature_names=self.meta["feature_names"])
        contributions = self.booster.predict(matrix, pred_contribs=True)  # [n, features + bias]
        names = self.meta["feature_names"]
        drivers = {
            group: np.exp(contributions[:, [names.index(f) for f in features]].sum(axis=1))
            for group, features in DRIVERS.items()
        }
        source = np.where(filled, "climatology", "record")
        return self.booster.inplace_predict(X), drivers, source

    def levels(self, expected: np.ndarray, resolutions: np.ndarray | None = None) -> np.ndarray:
        """Level index of each expected count, cut on its own resolution's thresholds."""
        if resolutions is None:
            return assign_levels(expected, self.thresholds)
        out = np.empty(len(expected), dtype=np.int64)
        # a few values: a set is cheaper than np.unique (8 us a call)
        for resolution in sorted(set(resolutions.tolist())):
            mine = resolutions == resolution
            out[mine] = assign_levels(expected[mine], self.thresholds_at(int(resolution)))
        return out

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / VOLUME_FILE)
        meta = {
            **self.meta,
            "zones": self.shares.zones,
            "p_block": self.shares.p_block.tolist(),
            "p_zone": self.shares.p_zone.tolist(),
            "unknown_zone_share": self.shares.unknown_zone_share,
            "children": [level.to_json() for level in self.children],
        }
        (directory / META_FILE).write_text(json.dumps(meta))
        if self.context is not None:
            self.context.save(directory)
        return directory

    @classmethod
    def load(cls, directory: Path) -> CrashRiskModel:
        booster = xgb.Booster()
        booster.load_model(Path(directory) / VOLUME_FILE)
        booster.set_param({"nthread": 1})
        meta = json.loads((Path(directory) / META_FILE).read_text())
        shares = ShareTable(
            zones=meta.pop("zones"),
            p_block=np.asarray(meta.pop("p_block")),
            p_zone=np.asarray(meta.pop("p_zone")),
            unknown_zone_share=meta.pop("unknown_zone_share"),
        )
        children = [ChildShares.from_json(level) for level in meta.pop("children", [])]
        context = ModelContext.load(Path(directory))
        return cls(booster=booster, shares=shares, meta=meta, children=children, context=context)


def zone_slot_grid(zones: list[str], days: pd.DatetimeIndex, grain: Grain) -> pd.DataFrame:
    """Every zone x block x day: the frame models and baselines are scored on (zeros included)."""
    grid = pd.MultiIndex.from_product(
        [days, zones, range(grain.n_blocks)], names=["date", "zone", "block"]
    )
    return grid.to_frame(index=False)


def train(
    prepared: Prepared,
    train_days: pd.DatetimeIndex,
    params: dict,
    cfg: ModelConfig,
    data_version: str | None,
) -> CrashRiskModel:
    """Fit both stages on training days only, then fix level thresholds on training zone-slots."""
    train_weather = prepared.weather[prepared.weather["date"] <= train_days.max()]
    clim = F.climatology(train_weather)
    days = prepared.days[prepared.days["date"].isin(train_days)]
    X = volume_features(pd.DatetimeIndex(days["date"]), train_weather, clim)
    regressor = xgb.XGBRegressor(
        objective="count:poisson", random_state=cfg.seed, n_jobs=2, **params
    )
    regressor.fit(X, days["volume"].to_numpy())
    shares = ShareTable.fit(prepared.slots, train_days, cfg)
    grain = cfg.grain
    model = CrashRiskModel(
        booster=regressor.get_booster(),
        shares=shares,
        children=fit_children(prepared.crashes, train_days, cfg, shares.zones),
        meta={
            "feature_names": list(X.columns),
            "climatology": clim,
            "zone_system": "h3",
            "zone_resolution": grain.resolution,
            "block_hours": grain.block_hours,
            "time_blocks": grain.spans,
            "training_window": [str(train_days.min().date()), str(train_days.max().date())],
            "training_days": len(train_days),
            "data_version": data_version,
            "params": params,
            "config": cfg.model_dump(),
            "thresholds": [],
        },
    )
    grid = zone_slot_grid(shares.zones, train_days, grain)
    expected, _ = model.expected(
        grid["zone"].to_numpy(),
        pd.DatetimeIndex(grid["date"]),
        grid["block"].to_numpy(),
        train_weather,
    )
    model.meta["thresholds"] = level_thresholds(expected)
    model.meta["thresholds_by_resolution"] = level_thresholds_by_resolution(model, expected)
    last_year = pd.date_range(end=train_days.max(), periods=SEASON_DAYS, freq="D")
    volumes = model.booster.inplace_predict(volume_features(last_year, train_weather, clim))
    model.context = ModelContext.build(
        prepared.crashes,
        train_days,
        model.resolutions,
        grain.n_blocks,
        pd.Series(volumes, index=last_year),
    )
    return model


def level_thresholds_by_resolution(
    model: CrashRiskModel, base_expected: np.ndarray, max_slots: int = 5_000_000
) -> dict[str, list[float]]:
    """Quintile cuts of every resolution on its own training zone-slots. A finer zone's expected
    count is its base zone's times its child shares, so the base grid's predictions are reused;
    days are thinned evenly to keep at most `max_slots` zone-slots per resolution."""
    table = model.zone_table
    n_base, n_blocks = model.shares.p_zone.shape[:2]
    base = base_expected.reshape(-1, n_base, n_blocks)  # zone_slot_grid order: day, zone, block
    out = {str(model.grain.resolution): model.meta["thresholds"]}
    for resolution in model.resolutions[1:]:
        rows = np.flatnonzero(table.resolution == resolution)
        step = max(1, int(np.ceil(len(base) * len(rows) * n_blocks / max_slots)))
        fine = base[::step][:, table.base_rows[rows], :] * table.factor[rows][None, :, :]
        out[str(resolution)] = level_thresholds(fine.ravel())
    return out
