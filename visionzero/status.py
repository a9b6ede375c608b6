"""`run.py status` and the closing summary of `run.py`: data, models and deployments at a glance."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from visionzero.data.versioning import read_version
from visionzero.platform.settings import paths
from visionzero.platform.stage import STAGES, Stage

if TYPE_CHECKING:
    from uuid import UUID

    from visionzero.evaluation.decision import Decision
    from visionzero.monitoring.canary import CanaryDecision
    from visionzero.monitoring.retrain import RetrainDecision
    from visionzero.monitoring.summary import MonitoringSummary
    from visionzero.rollout.actions import Deployment
    from visionzero.rollout.deployment_state import DeploymentState


def data_status() -> dict | None:
    if not paths().data_summary.exists():
        return None
    summary = json.loads(paths().data_summary.read_text())
    return {
        "version": read_version(paths().data_dir),
        "rows": summary["rows"],
        "complete_days": summary["complete_days"],
        "quarantined": summary["quarantined"],
        "day_flags": summary.get("day_flags", {}),
        "source": summary["source"],
        "source_note": summary["source_note"],
        "first_date": summary["first_date"],
        "last_date": summary["last_date"],
    }


def models_status(state: DeploymentState) -> dict:
    """The models the deployment state serves, described from the Model Control Plane (whose
    `stage` mirrors the state unless a registry sync failed)."""
    from visionzero.platform.registry import describe, model_version

    out: dict = {}
    for stage in STAGES:
        release = state.release(stage)
        try:
            out[stage] = describe(model_version(release.model_version)) if release else None
        except KeyError:  # the state names a version this ZenML store does not hold
            out[stage] = {"version": release.model_version, "stage": "not in the registry"}
    return out


def collect_status() -> dict:
    from visionzero.rollout.deployment_state import read_state

    state = read_state()
    summary = monitoring_status()
    return {
        "data": data_status(),
        "models": models_status(state),
        "deployments": state.model_dump(mode="json", exclude={"history"}),
        "monitoring": summary.model_dump(mode="json") if summary else None,
    }


def monitoring_status() -> MonitoringSummary | None:
    """The last monitoring run's summary (`python run.py monitor`), None before the first."""
    from visionzero.monitoring.summary import load_summary

    return load_summary()


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    # not strict: a row may be shorter than the header (["stage", "-"] when a stage is empty)
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    ]


def _span(value: object) -> str:
    return " .. ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or "-")


def _traffic(state: DeploymentState, stage: str) -> str:
    """The share of requests a stage takes: staging its canary weight, production the rest."""
    from visionzero.rollout.deployment_state import staging_weight

    weight = staging_weight(state)
    return f"{weight if stage == Stage.STAGING else 100 - weight}%"


def format_status(status: dict) -> str:
    """`run.py status` for people: the same content as --json, as three short tables."""
    from visionzero.monitoring.summary import MonitoringSummary
    from visionzero.rollout.deployment_state import DeploymentState

    lines = ["Data"]
    data = status.get("data")
    if data:
        quarantined = ", ".join(f"{k} {v}" for k, v in (data.get("quarantined") or {}).items())
        flagged = ", ".join(f"{k} {v}" for k, v in (data.get("day_flags") or {}).items())
        lines += _table(
            [
                ["version", str(data.get("version") or "-")],
                ["rows", f"{data['rows']} crashes, {data['complete_days']} complete days"],
                ["dates", f"{data['first_date']} .. {data['last_date']}"],
                ["source", f"{data['source']} ({data['source_note']})"],
                ["quarantined", quarantined or "none"],
                ["flagged", flagged or "none"],
            ]
        )
    else:
        lines.append("  none yet: `python run.py` loads it")
    lines += ["", "Models (serving, per the deployment state)"]
    rows = [["stage", "version", "deviance", "hit@10%", "data version", "training window"]]
    for stage, model in (status.get("models") or {}).items():
        metrics = (model or {}).get("metrics") or {}
        rows.append(
            [stage]
            + (
                [
                    str(model["version"]),
                    f"{metrics.get('poisson_deviance', float('nan')):.4f}",
                    f"{metrics.get('hit_rate_at_10', float('nan')):.4f}",
                    str(model.get("data_version") or "-"),
                    _span(model.get("training_window")),
                ]
                if model
                else ["-"]
            )
        )
    lines += _table(rows)
    lines += [
        f"  v{model['version']}: ZenML stage {model['stage']}, not {stage} (registry not synced: "
        "the next deploy, promote or rollback syncs it)"
        for stage, model in (status.get("models") or {}).items()
        if model and model.get("stage", stage) != stage
    ]
    state = DeploymentState.model_validate(status.get("deployments") or {})
    monitoring = status.get("monitoring")
    summary = MonitoringSummary.model_validate(monitoring) if monitoring else None
    lines += ["", *format_deployments(state), "", *format_monitoring(summary)]
    return "\n".join(lines)


def format_deployments(state: DeploymentState) -> list[str]:
    """What serves, the previous production with it (what `rollback` would restore)."""
    rows = [["stage", "model version", "bento", "traffic"]]
    for stage, release in (
        (Stage.PRODUCTION, state.production),
        (Stage.STAGING, state.staging),
        ("previous_production", state.previous_production),
    ):
        rows.append(
            [stage]
            + (
                [str(release.model_version), release.bento_tag, _traffic(state, stage)]
                if release
                else ["-"]
            )
        )
    return [f"Deployments (updated {state.updated_at or 'never'})", *_table(rows)]


def format_monitoring(summary: MonitoringSummary | None) -> list[str]:
    """The last monitoring run: forward deviance and hit@10% per stage, drift, the canary."""
    if not summary:
        return ["Monitoring", "  never run: `python run.py monitor`"]
    lines = [f"Monitoring (last run {summary.at}, res {summary.resolution})"]
    rows = [["stage", "version", "forward days", "deviance", "hit@10%", "status quo deviance"]]
    for stage, values in summary.forward.items():
        deviance = values.get("model_poisson_deviance")
        rows.append(
            [stage, str(values.get("model_version")), str(values.get("days"))]
            + (
                [
                    f"{deviance['estimate']:.4f}",
                    f"{values['model_hit_rate_at_10']['estimate']:.4f}",
                    f"{values['status_quo_poisson_deviance']['estimate']:.4f}",
                ]
                if deviance
                else ["-"]
            )
        )
    lines += _table(rows)
    canary = summary.canary
    lines.append(f"  drift flags: {', '.join(summary.drift_flags) or 'none'}")
    lines.append(f"  canary: {canary.action} ({canary.outcome or '-'})")
    lines += [f"    - {reason}" for reason in canary.reasons]
    lines.append(f"  retrain: {'yes' if summary.retrain.retrain else 'no'}")
    return lines


def training_summary(
    decision: Decision, deployment: Deployment, state: DeploymentState, port: int = 3000
) -> str:
    """The closing lines of `python run.py`: what was decided, what serves now, what to run next."""
    verdict = (decision.reasons or ["-"])[-1]
    lines = [
        f"Decision for model version {decision.model_version}: {decision.action} ({verdict})",
        f"Deployment: {deployment.summary}",
    ]
    serving = [
        f"{stage} v{release.model_version} ({release.bento_tag}, "
        f"{_traffic(state, stage)} of traffic)"
        for stage, release in state.serving().items()
    ]
    lines.append("Serving now: " + ("; ".join(serving) or "nothing (no production model yet)"))
    rollout = deployment.rollout or {}
    if state.production is None:
        lines.append("Next: python run.py report   (why this model was not deployed)")
    elif rollout.get("target") == "kubernetes" and rollout.get("apply_error"):
        lines.append(f"Next: kubectl apply -f {rollout['manifests']}   ({rollout['apply_error']})")
    elif rollout.get("target") == "kubernetes":
        lines.append(f"Next: python run.py status   (applied from {rollout['manifests']})")
    else:
        lines.append(f"Next: python run.py serve --port {port}")
    if state.staging is not None:
        lines.append("Then: python run.py promote   (or python run.py rollback)")
    return "\n".join(lines)


def training_outputs(run_id: UUID) -> tuple[Decision, Deployment]:
    """(decision, deployment) of one training run, read back from its artifacts by the run's id:
    never "the newest run", which with two runs at once is the other one (maybe still running)."""
    from zenml.client import Client

    run = Client().get_pipeline_run(run_id)
    return (
        run.steps["trigger_decision"].outputs["decision"][0].load(),
        run.steps["deployer"].outputs["deployment"][0].load(),
    )


def monitoring_outputs(run_id: UUID) -> tuple[CanaryDecision, list[str], RetrainDecision]:
    """The verdicts of one monitoring run (canary, drift flags, retrain), read back from its
    artifacts by the run's id: `monitoring.json` is whichever monitor finished last."""
    from zenml.client import Client

    steps = Client().get_pipeline_run(run_id).steps
    return (
        steps["canary_decider"].outputs["canary_decision"][0].load(),
        list(steps["drift_detector"].outputs["drift_report"][0].load().flags),
        steps["retrain_trigger"].outputs["retrain_decision"][0].load(),
    )
