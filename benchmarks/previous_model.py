"""Today's recipe against the res-7 share settings before the share hierarchy (half-life 730 days,
20 and 50 pseudo-crashes) on the latest holdout, paired: is the street-scale model no worse at
resolution 7, where the old one answered? (At 8 and 9 both get today's child shares.)

Run: .venv/bin/python benchmarks/previous_model.py   (bundled snapshot, offline; both recipes get
the same fixed volume parameters, so the comparison isolates the shares)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOLUME_PARAMS = {"n_estimators": 300, "max_depth": 3, "learning_rate": 0.05}
PREVIOUS = {
    "share_halflife_days": 730.0,
    "zone_prior_strength": 20.0,
    "daytype_prior_strength": 50.0,
}
KEYS = ("poisson_deviance", "hit_rate_at_10", "hit_rate_at_5")


def main() -> None:
    from visionzero.data.dataset import LoadConfig, build_dataset
    from visionzero.evaluation.backtest import EvaluationConfig
    from visionzero.evaluation.holdout import evaluate
    from visionzero.model.crash_risk import ModelConfig, train
    from visionzero.model.training_data import split

    with tempfile.TemporaryDirectory(prefix="vz-previous-") as tmp:
        build_dataset(Path(tmp) / "data", LoadConfig(offline=True))
        cfg = ModelConfig()
        prepared, train_days, holdout_days = split(Path(tmp) / "data", cfg)
    today = train(prepared, train_days, VOLUME_PARAMS, cfg, None)
    previous = train(prepared, train_days, VOLUME_PARAMS, cfg.model_copy(update=PREVIOUS), None)
    report = evaluate(
        prepared, train_days, holdout_days, today, previous, 0, EvaluationConfig(backtest_origins=1)
    )
    print(f"holdout {' .. '.join(report.holdout_window)}; today minus previous [95% CI]")
    print("| res | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for resolution, result in report.holdout.items():
        changes = result.differences["vs_production"]
        print(f"| {resolution} | " + " | ".join(str(changes[key]) for key in KEYS) + " |")


if __name__ == "__main__":
    main()
