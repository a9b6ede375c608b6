"""Load a run's dataset at the model's grain and split it in time.

The one entry point of every model step.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from visionzero.data.dataset import DatasetRef, load_frames
from visionzero.data.versioning import checkout_version
from visionzero.model.config import ModelConfig
from visionzero.model.crash_risk import Prepared, prepare, split_days


def split(data_dir: Path, cfg: ModelConfig) -> tuple[Prepared, pd.DatetimeIndex, pd.DatetimeIndex]:
    """The dataset files in data_dir at the model's grain, split into train and holdout days."""
    crashes, complete_days, weather = load_frames(data_dir)
    prepared = prepare(crashes, complete_days, weather, cfg)
    train_days, holdout_days = split_days(prepared.days["date"], cfg.holdout_days)
    return prepared, train_days, holdout_days


def load_split(
    dataset: DatasetRef, cfg: ModelConfig
) -> tuple[Prepared, pd.DatetimeIndex, pd.DatetimeIndex]:
    """Exactly the data version the run recorded (hash checked, restored from DVC when changed;
    DataVersionMismatch when it cannot be), so a re-run step or an old run reads the same data."""
    return split(checkout_version(dataset.version), cfg)
