"""How far Poisson deviance can fall at each resolution: the model's deviance on the latest holdout
next to its own noise floor (the deviance of counts drawn from its forecasts) and the status quo's,
and how much of the status quo's deviance comes from cells it forecasts as zero.

Run: .venv/bin/python benchmarks/deviance_floor.py   (bundled snapshot, offline, default recipe
with the volume parameters fixed instead of tuned: the shares decide deviance at fine grains)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOLUME_PARAMS = {"n_estimators": 300, "max_depth": 3, "learning_rate": 0.05}
SIMULATIONS = 20
FLOORS = (1e-4, 1e-6, 1e-8)  # the evaluation's floor, then smaller ones


def main() -> None:
    from visionzero.data.dataset import LoadConfig, build_dataset
    from visionzero.evaluation.grid import (
        DenseGrid,
        base_expected,
        crash_zones,
        model_expected,
        model_zones,
        status_quo_expected,
    )
    from visionzero.model.crash_risk import ModelConfig, train
    from visionzero.model.deviance import unit_poisson_deviance
    from visionzero.model.training_data import split

    with tempfile.TemporaryDirectory(prefix="vz-floor-") as tmp:
        build_dataset(Path(tmp) / "data", LoadConfig(offline=True))
        cfg = ModelConfig()
        prepared, train_days, holdout_days = split(Path(tmp) / "data", cfg)
    model = train(prepared, train_days, VOLUME_PARAMS, cfg, None)
    rng = np.random.default_rng(0)
    print(f"holdout {holdout_days.min().date()} .. {holdout_days.max().date()}")
    print(
        "| res | model | noise floor (mean of draws) | status quo | ratio | crashes where "
        "status quo = 0 | ratio with floor 1e-6 / 1e-8 |"
    )
    print("|---|---|---|---|---|---|---|")
    for resolution in model.resolutions:
        zones_by_crash = crash_zones(prepared, resolution)
        grid = DenseGrid.build(
            prepared,
            zones_by_crash,
            model_zones(model, resolution),
            holdout_days,
            cfg.grain.n_blocks,
        )
        base, _ = base_expected(model, holdout_days, prepared.weather)
        mu = model_expected(model, grid, prepared.weather, base)
        status_quo = status_quo_expected(prepared, zones_by_crash, train_days, grid)
        y = grid.observed
        model_dev = unit_poisson_deviance(y, mu).mean()
        floor = np.mean(
            [unit_poisson_deviance(rng.poisson(mu), mu).mean() for _ in range(SIMULATIONS)]
        )
        quo_dev = unit_poisson_deviance(y, status_quo).mean()
        zero_share = y[status_quo == 0].sum() / y.sum()
        ratios = [
            unit_poisson_deviance(y, mu, floor).mean()
            / unit_poisson_deviance(y, status_quo, floor).mean()
            for floor in FLOORS[1:]
        ]

        print(
            f"| {resolution} | {model_dev:.4f} | {floor:.4f} | {quo_dev:.4f} | "
            f"{model_dev / quo_dev:.3f} | {zero_share:.3f} | "
            f"{ratios[0]:.3f} / {ratios[1]:.3f} |"
        )


if __name__ == "__main__":
    main()
