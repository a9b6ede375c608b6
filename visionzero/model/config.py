"""The model's configuration: its grain (zone resolution, block length, finest resolution), the
holdout and the share stage's smoothing. Validated when a run configuration is read, so a bad
value stops the run before any data work (configs/training.yaml `parameters.model`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from visionzero.model.grain import Grain


class ModelConfig(BaseModel):
    """The model's grain and share smoothing (configs/training.yaml `parameters.model`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: int = Field(7, ge=0, le=15, description="H3 resolution of a zone (7: ~5 km2)")
    block_hours: int = Field(4, ge=1, le=24, description="length of a time block; divides 24")
    holdout_days: int = Field(90, ge=1, description="the latest complete days held out")
    share_halflife_days: float = Field(
        730.0,
        gt=0,
        description="recency weight of the share history: geography and geocoding drift",
    )
    zone_prior_strength: float = Field(
        20.0, ge=0, description="pseudo-crashes pulling P(zone|block) toward P(zone)"
    )
    daytype_prior_strength: float = Field(
        200.0,
        ge=0,
        description="pseudo-crashes pulling P(zone|block,daytype) toward P(zone|block): chosen on "
        "the 2023 complete-day windows (better at every resolution than 50)",
    )
    finest_resolution: int = Field(
        9, ge=0, le=15, description="finest H3 resolution served (9: ~0.1 km2, a few blocks)"
    )
    # Child strengths and half-life chosen on time-ordered validation inside the training period
    # (origins 2023-10-14 and 2023-03-15), never on the holdout: hit@10% at resolution 9 rose
    # ~0.003 at both origins over (5, 50, 1460), deviance no worse.
    child_zone_strength: float = Field(
        10.0,
        gt=0,
        description="pseudo-crashes pulling a child cell's share toward its prior in its parent",
    )
    child_neighbour_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="weight of the ring-1 neighbourhood split in a child's prior (the rest is "
        "uniform): a crash-free cell beside busy cells is not a crash-free cell in a park",
    )
    child_block_strength: float = Field(
        200.0,
        gt=0,
        description="pseudo-crashes pulling a child's share in a block toward its day: a small "
        "cell's time-of-day pattern is mostly noise, so it is shrunk hard",
    )
    child_halflife_days: float = Field(
        2190.0,
        gt=0,
        description="recency weight of the child-share history: a cell's share of its parent "
        "drifts slowly, and more years beat fresher ones",
    )
    seed: int = Field(7, description="random seed of XGBoost and the tuner")

    @model_validator(mode="after")
    def _finest_below_base(self) -> ModelConfig:
        if self.finest_resolution < self.resolution:
            raise ValueError("finest_resolution must be at least resolution")
        return self

    @property
    def grain(self) -> Grain:
        """Checked once here, so a bad resolution or block length fails before any data work."""
        return Grain(self.resolution, self.block_hours)
