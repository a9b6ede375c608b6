"""data_loader: snapshot + Socrata API rows -> validated, DVC-versioned dataset under data/."""

from __future__ import annotations

from typing import Annotated

from filelock import FileLock
from zenml import log_metadata, step
from zenml.logger import get_logger

from visionzero.data.dataset import DatasetRef, DatasetSummary, LoadConfig, build_dataset
from visionzero.data.summary_file import save_data_summary
from visionzero.data.versioning import checkout_version, version_data_dir
from visionzero.platform.alerts import build_message, send
from visionzero.platform.settings import paths

logger = get_logger(__name__)


def alert_flagged_days(summary: DatasetSummary) -> str:
    """Settled API days that are not complete need a person: an empty or implausible answer is a
    broken source (or a real change the rule must be told about), never silently fewer days."""
    total = sum(summary.day_flags.values())
    logger.warning(
        "%d settled API days are not complete (%s): %s",
        total,
        summary.day_flags,
        "; ".join(summary.flag_details[:3]),
    )
    message = build_message(
        "data",
        f"Data: {total} API days flagged, not complete",
        {
            **{f"{reason} days": count for reason, count in summary.day_flags.items()},
            "data version": summary.version or "-",
            "source": summary.source_note,
        },
        summary.flag_details,
    )
    return send(message)


def load_dataset(config: LoadConfig) -> DatasetRef:
    """The step's work without ZenML's run context, so tests drive it directly."""
    data_dir = paths().data_dir
    # Two runs at once (two first runs in a fresh clone) share data/, its staging folder and the
    # DVC repository: one builds, versions and pins at a time; the other then finds it built.
    paths().home.mkdir(parents=True, exist_ok=True)
    with FileLock(paths().home / "dataset.lock"):
        summary = build_dataset(data_dir, config)
        version = version_data_dir(data_dir)
        pinned = checkout_version(version)  # the run reads this copy: the next run rewrites data/
    summary = summary.model_copy(update={"version": version})
    logger.info(
        "Loaded %d crash rows (source: %s; %d months rewritten); quarantined %s; %d complete"
        " days; data version %s",
        summary.rows,
        summary.source,
        summary.months_rewritten,
        summary.quarantined or "none",
        summary.complete_days,
        summary.version,
    )
    save_data_summary(summary.model_dump())
    if summary.day_flags:
        alert_flagged_days(summary)
    return DatasetRef(**summary.model_dump(), data_dir=str(pinned))


@step(enable_cache=False)
def data_loader(config: LoadConfig) -> Annotated[DatasetRef, "dataset"]:
    dataset = load_dataset(config)
    log_metadata(metadata={"data": dataset.model_dump(exclude={"data_dir"})})
    return dataset
