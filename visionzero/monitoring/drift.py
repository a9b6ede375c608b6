"""Drift of the incoming crash data and of the request mix against the training window.

Two standard tests per mix, both needed for a flag: the population stability index (PSI: how far
the shares moved, in the credit-scoring convention < 0.1 stable, 0.1-0.25 moderate, > 0.25 large)
and Pearson's chi-square test of homogeneity of the two samples' counts (scipy). With hundreds of
thousands of crashes the test alone finds every trivial change significant, and PSI alone ignores
how much evidence there is: a flag needs a large shift that is also not chance.

The reference is the last `reference_days` complete days of the training window, not all of it:
the volume fell from about 590 to 240 a day across the window, so the whole window would flag
every recent day.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import chi2_contingency

from visionzero.model.grain import ancestors

SHARE_FLOOR = 1e-4  # PSI's log needs a share above zero: a category absent on one side
UNKNOWN = "UNKNOWN"


class DriftConfig(BaseModel):
    """Drift thresholds (configs/monitoring.yaml `parameters.drift`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    psi_threshold: float = Field(
        0.2, gt=0, description="a mix whose PSI exceeds this has moved (and the test agrees)"
    )
    p_value: float = Field(
        0.01, gt=0, lt=1, description="chi-square p-value below which a move is not chance"
    )
    reference_days: int | None = Field(
        90, ge=7, description="the last complete training days used as reference (null: all)"
    )
    min_current_days: int = Field(
        7, ge=1, description="complete days after training needed before data drift is tested"
    )
    min_requests: int = Field(100, ge=1, description="logged requests needed for request drift")
    recent_request_days: int = Field(
        7, ge=1, description="the resolution mix of this many latest days vs the requests before"
    )
    volume_bins: int = Field(10, ge=2, description="daily volume: bins at the reference deciles")


class DriftCheck(BaseModel):
    """One mix compared: the shares on both sides, PSI, chi-square and the verdict."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    name: str
    kind: str  # "data" (incoming crashes) or "requests" (the prediction log)
    flagged: bool
    psi: float | None = None
    chi_square: float | None = None
    p_value: float | None = None
    n_reference: float = 0
    n_current: float = 0
    reference_share: dict[str, float] = {}
    current_share: dict[str, float] = {}
    note: str | None = None

    def summary(self) -> str:
        if self.psi is None:
            return f"{self.name}: {self.note or 'not tested'}"
        verdict = "drifted" if self.flagged else "stable"
        return f"{self.name} {verdict} (PSI {self.psi:.3f}, chi-square p {self.p_value:.2g})"


class DriftReport(BaseModel):
    """The drift_detector artifact."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    reference_window: list[str] | None
    current_window: list[str] | None
    checks: list[DriftCheck]

    @property
    def flags(self) -> list[str]:
        return [f"{check.kind}:{check.name}" for check in self.checks if check.flagged]


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two count vectors over the same categories."""
    p = np.maximum(reference / reference.sum(), SHARE_FLOOR)
    q = np.maximum(current / current.sum(), SHARE_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def compare_counts(
    name: str, kind: str, reference: pd.Series, current: pd.Series, cfg: DriftConfig
) -> DriftCheck:
    """PSI and chi-square homogeneity of two samples' counts per category."""
    table = pd.concat([reference, current], axis=1, keys=["ref", "cur"]).fillna(0.0)
    table = table[table.sum(axis=1) > 0].sort_index()
    n_ref, n_cur = float(table["ref"].sum()), float(table["cur"].sum())
    base = {"name": name, "kind": kind, "n_reference": n_ref, "n_current": n_cur}
    if n_ref == 0 or n_cur == 0:
        return DriftCheck(**base, flagged=False, note="one side has no observations")
    shares = {
        "reference_share": (table["ref"] / n_ref).round(6).astype(float).to_dict(),
        "current_share": (table["cur"] / n_cur).round(6).astype(float).to_dict(),
    }
    shares = {key: {str(k): v for k, v in value.items()} for key, value in shares.items()}
    index = psi(table["ref"].to_numpy(float), table["cur"].to_numpy(float))
    if len(table) < 2:
        return DriftCheck(**base, **shares, flagged=False, psi=index, chi_square=0.0, p_value=1.0)
    statistic, p_value, _, _ = chi2_contingency(table.to_numpy(float).T)
    return DriftCheck(
        **base,
        **shares,
        psi=index,
        chi_square=float(statistic),
        p_value=float(p_value),
        flagged=bool(index > cfg.psi_threshold and p_value < cfg.p_value),
    )


def _window(days: pd.DatetimeIndex) -> list[str] | None:
    return [str(days.min().date()), str(days.max().date())] if len(days) else None


def reference_days(
    complete_days: pd.DatetimeIndex, training_window: list[str], cfg: DriftConfig
) -> pd.DatetimeIndex:
    start, end = (pd.Timestamp(day) for day in training_window)
    inside = complete_days[(complete_days >= start) & (complete_days <= end)].sort_values()
    return inside if cfg.reference_days is None else inside[-cfg.reference_days :]


def crash_mixes(crashes: pd.DataFrame, days: pd.DatetimeIndex) -> dict[str, pd.Series]:
    """Counts per category on some days: boroughs (UNKNOWN when blank), hour of day (timed crashes),
    geocoded or not, and the daily volumes themselves."""
    rows = crashes[crashes["crash_date"].isin(days)]
    minute = rows["crash_minute"].dropna().astype(int)
    return {
        "borough mix": rows["borough"].astype(object).fillna(UNKNOWN).value_counts(),
        "hour mix": (minute // 60).value_counts(),
        "geocoding rate": rows["geocoded"]
        .map({True: "geocoded", False: "not geocoded"})
        .value_counts(),
        "daily": rows.groupby("crash_date").size().reindex(days, fill_value=0),
    }


def crash_data_drift(
    crashes: pd.DataFrame,
    reference: pd.DatetimeIndex,
    current: pd.DatetimeIndex,
    cfg: DriftConfig,
) -> list[DriftCheck]:
    """The incoming crash rows of complete days against the reference window's."""
    names = ["daily volume", "geocoding rate", "borough mix", "hour mix"]
    if len(current) < cfg.min_current_days:
        note = f"{len(current)} complete days after training, {cfg.min_current_days} needed"
        return [DriftCheck(name=name, kind="data", flagged=False, note=note) for name in names]
    ref, cur = crash_mixes(crashes, reference), crash_mixes(crashes, current)
    edges = np.unique(np.quantile(ref["daily"], np.linspace(0, 1, cfg.volume_bins + 1)[1:-1]))

    def binned(daily: pd.Series) -> pd.Series:
        bins = np.searchsorted(edges, daily.to_numpy(), side="right")
        return pd.Series(bins).value_counts()

    volume = compare_counts("daily volume", "data", binned(ref["daily"]), binned(cur["daily"]), cfg)
    volume.note = f"mean {ref['daily'].mean():.0f} -> {cur['daily'].mean():.0f} crashes a day"
    return [volume] + [
        compare_counts(name, "data", ref[name], cur[name], cfg) for name in names[1:]
    ]


def request_mixes(predictions: pd.DataFrame, zone_borough: dict[str, str]) -> dict[str, pd.Series]:
    zone7 = pd.Series(ancestors(predictions["zone"].to_numpy(), 7))
    return {
        "block mix": predictions["block"].value_counts(),
        "borough mix": zone7.map(zone_borough).fillna(UNKNOWN).value_counts(),
        "zone-7 mix": zone7.value_counts(),
    }


def request_drift(
    predictions: pd.DataFrame,
    reference_cells: pd.DataFrame,
    zone_borough: dict[str, str],
    cfg: DriftConfig,
) -> list[DriftCheck]:
    """What people ask about against where and when the reference window's crashes happened
    (`reference_cells`: the timed crashes' finest cell and block), and the resolution mix of the
    latest requests against the earlier ones."""
    names = ["block mix", "borough mix", "zone-7 mix", "resolution mix"]
    if len(predictions) < cfg.min_requests:
        note = f"{len(predictions)} logged requests, {cfg.min_requests} needed"
        return [DriftCheck(name=name, kind="requests", flagged=False, note=note) for name in names]
    asked = request_mixes(predictions, zone_borough)
    happened = request_mixes(reference_cells.rename(columns={"cell": "zone"}), zone_borough)
    checks = [compare_counts(n, "requests", happened[n], asked[n], cfg) for n in names[:3]]
    cut = predictions["time"].max() - pd.Timedelta(days=cfg.recent_request_days)
    recent, earlier = (
        predictions[predictions["time"] > cut],
        predictions[predictions["time"] <= cut],
    )
    if len(earlier) < cfg.min_requests:
        checks.append(
            DriftCheck(
                name="resolution mix",
                kind="requests",
                flagged=False,
                note=f"{len(earlier)} requests before the latest {cfg.recent_request_days} days, "
                f"{cfg.min_requests} needed",
            )
        )
    else:
        checks.append(
            compare_counts(
                "resolution mix",
                "requests",
                earlier["resolution"].value_counts(),
                recent["resolution"].value_counts(),
                cfg,
            )
        )
    return checks


def detect_drift(
    crashes: pd.DataFrame,
    complete_days: pd.DatetimeIndex,
    training_window: list[str],
    reference_cells: pd.DataFrame,
    predictions: pd.DataFrame | None,
    zone_borough: dict[str, str],
    cfg: DriftConfig,
) -> DriftReport:
    """Every check: crash data of the complete days after the training window, and the request
    mix of the prediction log (when there is one)."""
    reference = reference_days(complete_days, training_window, cfg)
    current = complete_days[complete_days > pd.Timestamp(training_window[1])].sort_values()
    checks = crash_data_drift(crashes, reference, current, cfg)
    if predictions is not None:
        ref_cells = reference_cells[reference_cells["crash_date"].isin(reference)]
        checks += request_drift(predictions, ref_cells, zone_borough, cfg)
    return DriftReport(
        reference_window=_window(reference), current_window=_window(current), checks=checks
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def drift_html(report: DriftReport) -> str:
    """The drift summary as a page for the ZenML dashboard: one row per check."""
    rows = []
    for check in report.checks:
        moved = sorted(
            check.current_share,
            key=lambda k: -abs(check.current_share[k] - check.reference_share.get(k, 0.0)),
        )[:3]
        shifts = ", ".join(
            f"{html.escape(k)} {check.reference_share.get(k, 0.0):.3f}&rarr;"
            f"{check.current_share[k]:.3f}"
            for k in moved
        )
        colour = "#e74c3c" if check.flagged else "#2ecc71"
        rows.append(
            f"<tr><td>{check.kind}</td><td>{html.escape(check.name)}</td>"
            f"<td style='color:{colour}'>{'DRIFT' if check.flagged else 'ok'}</td>"
            f"<td>{_number(check.psi)}</td><td>{_number(check.p_value)}</td>"
            f"<td>{check.n_reference:.0f} / {check.n_current:.0f}</td>"
            f"<td>{shifts}</td><td>{html.escape(check.note or '')}</td></tr>"
        )
    windows = (
        f"reference {' .. '.join(report.reference_window or ['-'])}, "
        f"current {' .. '.join(report.current_window or ['-'])}"
    )
    return (
        "<html><body style='font-family:sans-serif'><h2>Drift</h2>"
        f"<p>{windows}; flags: {html.escape(', '.join(report.flags) or 'none')}</p>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<tr><th>kind</th><th>check</th><th>verdict</th><th>PSI</th><th>chi-square p</th>"
        "<th>n reference / current</th><th>largest share moves</th><th>note</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
