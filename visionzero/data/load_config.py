"""The data_loader's parameters: what a dataset build may fetch and how it judges API days."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LoadConfig(BaseModel):
    """The data_loader's parameters (configs/training.yaml `parameters.data`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline: bool = Field(False, description="never touch the network (`run.py --offline`)")
    settle_days: int = Field(
        30,
        ge=0,
        description="an API day is judged once it is this old: late reports have arrived by then",
    )
    reference_days: int = Field(
        8,
        ge=1,
        description="an API day's crash count is compared with the median of the last this many"
        " complete days of the same weekday",
    )
    day_count_range: tuple[float, float] = Field(
        (0.4, 1.75),
        description="plausible crash count of an API day, as multiples of that median (holidays"
        " reach 0.5, one borough alone is under 0.4, a doubled answer is 2)",
    )
    page_size: int = Field(50_000, ge=1, description="Socrata `$limit` per page")
    max_pages: int = Field(20, ge=1, description="at most this many pages per run")
    max_attempts: int = Field(4, ge=1, description="tries per HTTP request")
    backoff_seconds: float = Field(0.5, ge=0, description="first retry wait, doubled each retry")
    backfill_concurrency: int = Field(
        2,
        ge=1,
        le=8,
        description="backfill windows (months) fetched at a time: the API is shared, be polite",
    )
    snapshot_until: date | None = Field(
        None,
        description="bundled snapshot rows and complete days after this day are held back: a "
        "replay lets later days arrive through the API, as they would have",
    )

    @field_validator("day_count_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError("must be two multiples 0 < low < high")
        return value
