"""The deployment state: which model and Bento are production and staging,
and the previous production.

One JSON file, written atomically (temp file + rename) under an exclusive lock; both the local
canary and the Kubernetes manifests render from it, so it is the single source of truth for what
serves traffic. `DeploymentState` is its one typed form: `read_state` and `write_state` below are
the only code that reads or writes the file, and the file keeps the format it always had.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, field_validator

from visionzero.platform.settings import paths
from visionzero.platform.stage import STAGES, Stage
from visionzero.serving.bento_build import Release

CANARY_WEIGHT = 50  # percent of traffic staging takes, locally and in Kubernetes
HISTORY_KEPT = 50  # events the state remembers


class Event(BaseModel):
    """One change of the state, as `status` and the monitor's forward days read it."""

    model_config = ConfigDict(extra="allow")  # details a later event may carry are kept

    event: str  # deploy_production, deploy_staging, promote, rollback, rollback_staging
    at: str
    model_version: int


class DeploymentState(BaseModel):
    """What serves: production, the canary beside it (staging) and the production before."""

    model_config = ConfigDict(validate_assignment=True)  # a release set stays a Release

    production: Release | None = None
    staging: Release | None = None
    previous_production: Release | None = None
    canary_weight: int = CANARY_WEIGHT
    updated_at: str | None = None
    history: list[Event] = []

    @field_validator("history", mode="before")
    @classmethod
    def _no_history_is_empty(cls, value: object) -> object:
        return [] if value is None else value

    def release(self, stage: Stage) -> Release | None:
        return self.production if stage == Stage.PRODUCTION else self.staging

    def serving(self) -> dict[Stage, Release]:
        """The releases the state wants served, by stage (production first)."""
        return {stage: release for stage in STAGES if (release := self.release(stage))}


class NoProduction(RuntimeError):
    """Nothing to serve, render or compare against yet: the first `make run` makes a production."""

    def __init__(self) -> None:
        super().__init__("no production model yet: run `make run` first")


def require_production(state: DeploymentState) -> Release:
    """The state's production release; NoProduction when there is none."""
    if state.production is None:
        raise NoProduction()
    return state.production


def staging_weight(state: DeploymentState) -> int:
    """Percent of traffic staging takes: the canary weight while there is a staging, else 0."""
    return state.canary_weight if state.staging is not None else 0


def state_path() -> Path:
    return paths().deployment_state


def parse_state(text: str) -> DeploymentState:
    """The state a file's text holds (empty: nothing deployed). Raises ValueError when it is not
    a deployment state."""
    return DeploymentState.model_validate_json(text) if text else DeploymentState()


def state_json(state: DeploymentState) -> str:
    """The file's text: the JSON the state file has always held (two-space indent)."""
    return json.dumps(state.model_dump(mode="json"), indent=2)


def read_state(path: Path | None = None) -> DeploymentState:
    path = path or state_path()
    return parse_state(path.read_text()) if path.exists() else DeploymentState()


def write_state(path: Path, state: DeploymentState) -> None:
    """Atomically: a reader sees the old state or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".deployment-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        handle.write(state_json(state))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked_state(path: Path | None = None) -> Iterator[DeploymentState]:
    """Read-modify-write under an exclusive lock.

    The new state is written only if the block succeeds.
    """
    path = path or state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        state = read_state(path)
        before = state_json(state)
        yield state
        if state_json(state) != before:
            state.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
            write_state(path, state)


def _event(state: DeploymentState, event: str, release: Release) -> None:
    at = datetime.now(UTC).isoformat(timespec="seconds")
    state.history = [
        *state.history[-(HISTORY_KEPT - 1) :],
        Event(event=event, at=at, model_version=release.model_version),
    ]


def apply_decision(state: DeploymentState, action: str, release: Release) -> str:
    """Mutate state for a trigger decision.

    Returns what changed ("production", "staging" or "none").
    """
    if action == Stage.PRODUCTION:
        if state.production is not None and state.production.model_tag == release.model_tag:
            return "none"
        state.previous_production, state.production, state.staging = (
            state.production,
            release,
            None,
        )
    elif action == Stage.STAGING:
        state.staging = release
    else:
        return "none"
    _event(state, f"deploy_{action}", release)
    return str(action)


def promote(state: DeploymentState) -> Release | None:
    """Staging becomes production (100% of traffic); None when there is no staging (idempotent)."""
    if state.staging is None:
        return None
    state.previous_production, state.production, state.staging = (
        state.production,
        state.staging,
        None,
    )
    _event(state, "promote", state.production)
    return state.production


def rollback(state: DeploymentState) -> Release | None:
    """All traffic back to the previous production (a running canary is dropped with it). With no
    previous production but a canary, the canary is dropped. None when there is nothing to undo."""
    if state.previous_production is not None:
        state.production, state.previous_production, state.staging = (
            state.previous_production,
            None,
            None,
        )
    elif state.staging is not None:
        state.staging = None
    else:
        return None
    _event(state, "rollback", require_production(state))
    return state.production


def rollback_staging(state: DeploymentState) -> Release | None:
    """The canary's own rollback: staging is dropped, production stays. (`rollback` also undoes the
    last promote, which would throw away a good production for a bad canary.) None when there is
    no staging (idempotent)."""
    if state.staging is None:
        return None
    dropped, state.staging = state.staging, None
    _event(state, "rollback_staging", dropped)
    return state.production
