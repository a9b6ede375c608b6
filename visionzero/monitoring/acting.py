"""The canary decision carried out: through the same promote path as `run.py promote`, and the
canary's own rollback (staging dropped, production kept), then one Discord alert.

A failure to act leaves the deployment state as it was (`promote_or_rollback` changes it only
after the new production passed its check) and the decision says why; the alert says so too.
"""

from __future__ import annotations

from visionzero.monitoring.canary import CanaryDecision
from visionzero.platform.alerts import build_message, send
from visionzero.rollout.actions import promote_or_rollback

ROLLOUT_KIND = {"promote": "promote", "rollback": "rollback_staging"}


def act_on(decision: CanaryDecision, target: str, act: bool = True) -> CanaryDecision:
    """Carry out promote or rollback (wait and none change nothing), alert, and return the
    decision with what happened."""
    if decision.action not in ROLLOUT_KIND:
        return decision.model_copy(update={"outcome": "nothing to do"})
    if not act:
        outcome = "not carried out: acting is off (act: false)"
        acted = False
    else:
        try:
            result = promote_or_rollback(ROLLOUT_KIND[decision.action], target)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the state; say which
            outcome, acted = (
                f"failed, deployment state unchanged: {type(exc).__name__}: {exc}",
                False,
            )
        else:
            outcome, acted = result.summary, result.changed
            if result.registry_error:
                outcome += f" (registry not synced: {result.registry_error})"
    done = decision.model_copy(update={"acted": acted, "outcome": outcome})
    kind = decision.action if acted else "failure" if act else "none"
    send(
        build_message(
            kind,
            f"Crash-risk canary: {decision.action}" + ("" if acted else " (not carried out)"),
            {
                "staging version": decision.staging_version or "-",
                "production version": decision.production_version or "-",
                "forward days (both live)": decision.paired_days,
                "outcome": outcome,
            },
            decision.reasons,
        )
    )
    return done
