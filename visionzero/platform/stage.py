"""The two stages a deployment holds, defined once.

A `StrEnum`: a `Stage` is the string itself, so JSON files, environment variables, URLs, labels and
comparisons with plain strings keep working unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A serving role: production takes the traffic, staging is the canary beside it."""

    PRODUCTION = "production"
    STAGING = "staging"


# the stages in the order they are shown and served; every other model version is "archived"
STAGES: tuple[Stage, ...] = tuple(Stage)
