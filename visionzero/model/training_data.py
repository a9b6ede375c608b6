"""Load a run's dataset at the model's grain and split it in time.

The one entry point of every model step.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from visionzero.data.dataset import load_frames
from visionzero.model.crash_risk import ModelConfig, Prepared, prepare, split_days


def load_split(
    data_dir: str, cfg: ModelConfig
) -> tuple[Prepared, pd.DatetimeIndex, pd.DatetimeIndex]:
    crashes, complete_days, weather = load_frames(Path(data_dir))
    prepared = prepare(crashes, complete_days, weather, cfg)
    train_days, holdout_days = split_days(prepared.days["date"], cfg.holdout_days)
    return prepared, train_days, holdout_days
