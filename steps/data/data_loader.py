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


@step(enable_cache=False)
def data_loader(offline: bool = False, settle_days: int = 30, page_size: int = 50_000,
                max_pages: int = 20) -> Annotated[DatasetRef, "dataset"]:
    data_dir = paths().data_dir
    summary = build_dataset(data_dir, LoadConfig(offline=offline, settle_days=settle_days,
                                                 page_size=page_size, max_pages=max_pages))
    summary.version = version_data_dir(data_dir)
    logger.info("Loaded %d crash rows (source: %s); quarantined %s; %d complete days; "
                "data version %s", summary.rows, summary.source, summary.quarantined or "none",
                summary.complete_days, summary.version)
    save_data_summary(summary.to_json())
    log_metadata(metadata={"data": summary.to_json()})
    return DatasetRef(data_dir=str(data_dir), **summary.to_json())
