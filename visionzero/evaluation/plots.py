"""The evaluation report's plots: calibration by block, hit-rate curve, per-borough hit rate."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_plots(report: dict, out: Path) -> list[Path]:
    files = []
    blocks = report["slices"]["block"]
    names = list(blocks["candidate"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(names, [blocks["candidate"][n]["observed_total"] for n in names], "ko-", label="observed")
    for role in ("candidate", "baseline"):
        ax.plot(names, [blocks[role][n]["predicted_total"] for n in names], "o--", label=role)
    ax.set(title="Calibration: holdout crashes per time block", xlabel="block", ylabel="crashes")
    ax.legend()
    files.append(out / "calibration.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    curve = report["hit_rate_curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for role in ("candidate", "baseline"):
        ax.plot(curve["k_percent"], curve[role], label=role)
    ax.set(title="Hit rate: share of crashes in the top k% zone-slots", xlabel="k (%)", ylabel="hit rate")
    ax.legend()
    files.append(out / "hit_rate_curve.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    boroughs = report["slices"]["borough"]
    names = list(boroughs["candidate"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.4
    for i, role in enumerate(("candidate", "baseline")):
        ax.bar([x + i * width for x in range(len(names))],
               [boroughs[role][n]["hit_rate_at_10"] for n in names], width, label=role)
    ax.set_xticks([x + width / 2 for x in range(len(names))], names, rotation=20)
    ax.set(title="Hit rate @10% by borough", ylabel="hit rate")
    ax.legend()
    files.append(out / "per_borough.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return files
