"""Deploy, promote and roll back.

State first (atomic), then the target, then ZenML stages and MLflow aliases, synced from the
state: the state is the one source of truth of what serves, the registries only mirror it.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from pydantic import BaseModel

from visionzero.platform.alerts import build_message, send
from visionzero.platform.settings import paths, settings
from visionzero.rollout import backend, kubernetes
from visionzero.rollout import deployment_state as deployment
from visionzero.rollout.deployment_state import DeploymentState
from visionzero.serving.bento_build import Release

log = logging.getLogger(__name__)


class Deployment(BaseModel):
    """The deployer artifact: what changed, the state it left and how the target took it."""

    changed: str  # "production", "staging" or "none"
    summary: str
    state: DeploymentState
    rollout: dict[str, Any] | None = None
    registry_error: str | None = None  # the stages were not synced; the deployment stands


class RolloutResult(BaseModel):
    """What promote, rollback or the canary's rollback did (`run.py promote` prints it)."""

    changed: bool
    state: DeploymentState
    summary: str
    registry_error: str | None = None  # the stages were not synced; the change stands
    rollout: dict[str, Any] | None = None  # how the target took it; only after a change


def roll_out(state: DeploymentState, target: str) -> dict:
    """Make the target match the state.

    A failure here is reported, never undoes the recorded state.
    """
    if target == "local":
        return {"target": "local", "note": "`python run.py serve` serves this state behind nginx"}
    if target != "kubernetes":
        raise ValueError(f"unknown deploy target {target!r} (local or kubernetes)")
    out_dir = paths().home / "k8s"
    previous = kubernetes.load_rendered(out_dir)
    files = kubernetes.render(state, out_dir)
    result: dict = {
        "target": "kubernetes",
        "manifests": str(out_dir),
        "files": len(files),
        # what the pruning apply does if the cluster holds the previous render
        "plan": kubernetes.apply_plan(previous, kubernetes.load_rendered(out_dir)),
    }
    for stage, release in state.serving().items():
        try:
            result[f"{stage}_images"] = kubernetes.containerize_and_push(
                release, settings().vz_registry
            )
        except (kubernetes.NoContainerEngine, subprocess.CalledProcessError, OSError) as exc:
            result["images_error"] = str(exc)
            break
    try:
        result["kubectl"] = kubernetes.apply(out_dir)
    except RuntimeError as exc:
        result["apply_error"] = str(exc)
    return result


def deploy(action: str, release: Release | None, target: str) -> Deployment:
    """Record the decision in the deployment state, roll the state out on the target, then sync
    the registry stages from it. A registry failure is reported and never undoes the state."""
    with deployment.locked_state() as state:
        changed = (
            deployment.apply_decision(state, action, release) if release is not None else "none"
        )
        snapshot = state.model_copy(deep=True)
    if changed == "none" or release is None:
        return Deployment(changed="none", summary="no change", state=snapshot)
    rollout = roll_out(snapshot, target)
    registry_error = sync_reported(snapshot, "deploy")
    return Deployment(
        changed=changed,
        state=snapshot,
        rollout=rollout,
        registry_error=registry_error,
        summary=f"{changed}: model {release.model_version} ({release.bento_tag})",
    )


def sync_registry_stages(state: DeploymentState) -> None:
    """ZenML stages and MLflow aliases follow the deployment state: its production and staging
    hold them, every other version loses them (staging is cleared by promote and rollback)."""
    from visionzero.platform.registry import sync_stages

    sync_stages({stage: release.model_version for stage, release in state.serving().items()})


def sync_reported(state: DeploymentState, what: str) -> str | None:
    """sync_registry_stages, its failure logged and returned rather than raised: the deployment
    state is already the truth, and the next sync repairs the registries."""
    try:
        sync_registry_stages(state)
    except Exception as exc:  # noqa: BLE001 - any registry failure, reported the same way
        error = f"{type(exc).__name__}: {exc}"
        log.warning("%s: registry stages not updated (%s)", what, error)
        return error
    return None


ROLLOUT_ACTIONS = {
    "promote": deployment.promote,
    "rollback": deployment.rollback,
    "rollback_staging": deployment.rollback_staging,  # the canary's verdict: production stays
}


def promote_or_rollback(kind: str, target: str = "local", alert: bool = False) -> RolloutResult:
    """Run `promote`, `rollback` or `rollback_staging` under the state lock.

    The new production must first pass the check `serve` makes (its Bento started on a free port:
    /readyz, then a real prediction): a release that fails it leaves the state, and so the
    traffic, as they were, alerts and raises CanaryError with the model server's reason.
    With `alert` (a person ran the command) a change is alerted too; the monitor sends its own
    canary alert instead. Idempotent (a second call changes nothing).
    """
    try:
        with deployment.locked_state() as state:
            serving = state.production
            release = ROLLOUT_ACTIONS[kind](state)
            if release is not None and release != serving:
                backend.preflight(release)
            snapshot = state.model_copy(deep=True)
    except backend.BackendFailed as exc:
        fields = {
            "refused version": exc.release.model_version,
            "bento": exc.release.bento_tag,
            "production (unchanged)": serving.model_version if serving else "none",
        }
        send(build_message("failure", f"Crash-risk model: {kind} refused", fields, [str(exc)]))
        raise backend.CanaryError(f"{kind} refused, nothing changed: {exc}") from exc
    if release is None:
        return RolloutResult(
            changed=False,
            state=snapshot,
            summary=(
                f"{kind}: nothing to do "
                f"(no {'previous production' if kind == 'rollback' else 'staging'})"
            ),
        )
    summary = f"{kind}: model {release.model_version} now serves 100% as production"
    registry_error = sync_reported(snapshot, kind)
    result = RolloutResult(
        changed=True,
        state=snapshot,
        summary=summary,
        registry_error=registry_error,
        rollout=roll_out(snapshot, target),
    )
    if alert:
        fields = {
            "production version": release.model_version,
            "bento": release.bento_tag,
            "staging": "none",
        }
        send(build_message(kind, f"Crash-risk model: {kind}", fields, [summary]))
    return result
