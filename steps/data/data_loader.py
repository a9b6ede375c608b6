"""data_loader: snapshot + Socrata API rows -> validated, DVC-versioned dataset under data/."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef, LoadConfig, build_dataset
from visionzero.data.versioning import version_data_dir
from visionzero.platform.settings import paths
from visionzero.status import save_data_summary

logger = get_logger(__name__)


def load_dataset(config: LoadConfig) -> DatasetRef:
    """The step's work without ZenML's run context, so tests drive it directly."""
    data_dir = paths().data_dir
    summary = build_dataset(data_dir, config)
    summary = summary.model_copy(update={"version": version_data_dir(data_dir)})
    logger.info(
        "Loaded %d crash rows (source: %s); quarantined %s; %d complete days; data version %s",
        summary.rows,
        summary.source,
        summary.quarantined or "none",
        summary.complete_days,
        summary.version,
    )
    save_data_summary(summary.model_dump())
    return DatasetRef(data_dir=str(data_dir), **summary.model_dump())


@step(enable_cache=False)
def data_loader(config: LoadConfig) -> Annotated[DatasetRef, "dataset"]:
    dataset = load_dataset(config)
    log_metadata(metadata={"data": dataset.model_dump(exclude={"data_dir"})})
    return dataset
