"""The deployment state: which model and Bento are production and staging,
and the previous production.

One JSON file, written atomically (temp file + rename) under an exclusive lock; both the local
canary and the Kubernetes manifests render from it, so it is the single source of truth for what
serves traffic.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from visionzero.platform.settings import paths

CANARY_WEIGHT = 50  # percent of traffic staging takes, locally and in Kubernetes
EMPTY_STATE = {
    "production": None,
    "staging": None,
    "previous_production": None,
    "canary_weight": CANARY_WEIGHT,
    "updated_at": None,
    "history": [],
}


class NoProduction(RuntimeError):
    """Nothing to serve, render or compare against yet: the first `make run` makes a production."""

    def __init__(self) -> None:
        super().__init__("no production model yet: run `make run` first")


def require_production(state: dict) -> dict:
    """The state's production release; NoProduction when there is none."""
    if not state.get("production"):
        raise NoProduction()
    return state["production"]


def staging_weight(state: dict) -> int:
    """Percent of traffic staging takes: the canary weight while there is a staging, else 0."""
    return int(state.get("canary_weight", CANARY_WEIGHT)) if state.get("staging") else 0


def state_path() -> Path:
    return paths().deployment_state


def read_state(path: Path | None = None) -> dict:
    path = path or state_path()
    if not path.exists():
        return copy.deepcopy(EMPTY_STATE)
    return json.loads(path.read_text())


def _write_atomic(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".deployment-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked_state(path: Path | None = None) -> Iterator[dict]:
    """Read-modify-write under an exclusive lock.

    The new state is written only if the block succeeds.
    """
    path = path or state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        state = read_state(path)
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            state["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            _write_atomic(path, state)


def _event(state: dict, event: str, **details: object) -> None:
    state["history"] = (state.get("history") or [])[-49:] + [
        {"event": event, "at": datetime.now(UTC).isoformat(timespec="seconds"), **details}
    ]


def apply_decision(state: dict, action: str, release: dict) -> str:
    """Mutate state for a trigger decision.

    Returns what changed ("production", "staging" or "none").
    """
    if action == "production":
        if state["production"] and state["production"]["model_tag"] == release["model_tag"]:
            return "none"
        state["previous_production"], state["production"], state["staging"] = (
            state["production"],
            release,
            None,
        )
    elif action == "staging":
        state["staging"] = release
    else:
        return "none"
    _event(state, f"deploy_{action}", model_version=release["model_version"])
    return action


def promote(state: dict) -> dict | None:
    """Staging becomes production (100% of traffic); None when there is no staging (idempotent)."""
    if not state["staging"]:
        return None
    state["previous_production"], state["production"], state["staging"] = (
        state["production"],
        state["staging"],
        None,
    )
    _event(state, "promote", model_version=state["production"]["model_version"])
    return state["production"]


def rollback(state: dict) -> dict | None:
    """All traffic back to the previous production (a running canary is dropped with it). With no
    previous production but a canary, the canary is dropped. None when there is nothing to undo."""
    if state["previous_production"]:
        state["production"], state["previous_production"], state["staging"] = (
            state["previous_production"],
            None,
            None,
        )
    elif state["staging"]:
        state["staging"] = None
    else:
        return None
    _event(state, "rollback", model_version=state["production"]["model_version"])
    return state["production"]


def rollback_staging(state: dict) -> dict | None:
    """The canary's own rollback: staging is dropped, production stays. (`rollback` also undoes the
    last promote, which would throw away a good production for a bad canary.) None when there is
    no staging (idempotent)."""
    if not state["staging"]:
        return None
    dropped, state["staging"] = state["staging"], None
    _event(state, "rollback_staging", model_version=dropped["model_version"])
    return state["production"]
