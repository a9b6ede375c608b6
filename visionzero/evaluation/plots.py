"""The evaluation report's plots: calibration by block, hit-rate curve, per-borough hit rate."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from visionzero.evaluation.holdout import EvaluationReport, ResolutionResult  # noqa: E402
from visionzero.evaluation.metrics import INTERVAL_KEYS, METRIC_KEYS  # noqa: E402

METRIC_NAMES = {
    "poisson_deviance": "deviance",
    "hit_rate_at_10": "hit@10%",
    "hit_rate_at_5": "hit@5%",
    "pai_at_10": "PAI@10%",
    "calibration_ratio": "predicted/observed",
}


def _rows(resolution: str, result: ResolutionResult) -> list[str]:
    has_production = "production" in result.roles
    rows = []
    for key in INTERVAL_KEYS:
        cells = [
            f"res {resolution}",
            METRIC_NAMES[key],
            f"{result.roles['candidate'][key].estimate:.4f}",
            f"{result.roles['baseline'][key].estimate:.4f}",
            str(result.differences["vs_baseline"][key]),
        ]
        if has_production:
            cells += [
                f"{result.roles['production'][key].estimate:.4f}",
                str(result.differences["vs_production"][key]),
            ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def markdown_table(report: EvaluationReport) -> list[str]:
    """Every resolution, holdout then pooled backtest: each role's value and the new model's
    change against the status quo and production with 95% day-block bootstrap intervals."""
    has_production = report.production is not None
    header = "| resolution | metric | new model | status quo | new - status quo [95% CI] |"
    rule = "|---|---|---|---|---|"
    if has_production:
        header += f" production v{report.production_version} | new - production [95% CI] |"
        rule += "---|---|"
    origins = ", ".join(" .. ".join(o.test_window) for o in report.origins)
    lines = [
        f"Scored fit: {report.scored_fit}. Served: {report.served_fit}.",
        f"Production: {report.production_not_comparable}"
        if report.production_not_comparable
        else "Production: its recipe refit on the same training days at every origin.",
        "",
        f"Latest holdout {' .. '.join(report.holdout_window)} ({report.holdout_days} days):",
        "",
        header,
        rule,
    ]
    for resolution, result in report.holdout.items():
        lines += _rows(resolution, result)
    title = (
        f"Rolling-origin backtest, {len(report.origins)} origins ({origins}), pooled. The earlier "
        "windows lie inside the training period, where tuning folds and default settings were "
        "chosen: they show stability across regimes; the deploy rule reads the holdout above."
    )
    lines += ["", title, "", header, rule]
    for resolution, result in report.backtest.items():
        lines += _rows(resolution, result)
    return lines


def write_plots(report: EvaluationReport, out: Path) -> list[Path]:
    """Calibration by block, hit-rate curve and per-borough hit rate as PNG files in out."""
    data = report.model_dump()
    files = []
    blocks = data["slices"]["block"]
    names = list(blocks["candidate"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        names, [blocks["candidate"][n]["observed_total"] for n in names], "ko-", label="observed"
    )
    for role in ("candidate", "baseline"):
        ax.plot(names, [blocks[role][n]["predicted_total"] for n in names], "o--", label=role)
    ax.set(title="Calibration: holdout crashes per time block", xlabel="block", ylabel="crashes")
    ax.legend()
    files.append(out / "calibration.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    curve = data["hit_rate_curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for role in ("candidate", "baseline"):
        ax.plot(curve["k_percent"], curve[role], label=role)
    ax.set(
        title="Hit rate: share of crashes in the top k% zone-slots",
        xlabel="k (%)",
        ylabel="hit rate",
    )
    ax.legend()
    files.append(out / "hit_rate_curve.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    boroughs = data["slices"]["borough"]
    names = list(boroughs["candidate"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.4
    for i, role in enumerate(("candidate", "baseline")):
        ax.bar(
            [x + i * width for x in range(len(names))],
            [boroughs[role][n]["hit_rate_at_10"] for n in names],
            width,
            label=role,
        )
    ax.set_xticks([x + width / 2 for x in range(len(names))], names, rotation=20)
    ax.set(title="Hit rate @10% by borough", ylabel="hit rate")
    ax.legend()
    files.append(out / "per_borough.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return files


def report_html(report: EvaluationReport, plot_files: list[Path]) -> str:
    """The metrics table and the plots as one self-contained page: ZenML's dashboard shows it."""
    roles = [
        ("new model", report.candidate),
        ("production, same holdout", report.production),
        ("historical average", report.baseline),
    ]
    header = "".join(f"<th>{key}</th>" for key in [*METRIC_KEYS, "predicted/observed"])
    rows = "".join(
        f"<tr><td>{name}</td>"
        + "".join(f"<td>{value:.4f}</td>" for value in scores.headline().values())
        + f"<td>{scores.calibration_ratio:.3f}</td></tr>"
        for name, scores in roles
        if scores is not None
    )
    images = "".join(
        f'<img alt="{path.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}">'
        for path in plot_files
    )
    window = " .. ".join(report.holdout_window)
    table = html.escape("\n".join(markdown_table(report)))
    return (
        f"<html><body><h2>Holdout {window} ({report.holdout_days} complete days, "
        f"{report.zone_slots:,} zone-slots at resolution {report.resolution})</h2>"
        f"<table border='1' cellpadding='4'><tr><th>model</th>{header}</tr>{rows}</table>"
        f"<h3>Every resolution, with intervals</h3><pre>{table}</pre>{images}</body></html>"
    )
