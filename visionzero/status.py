"""`run.py status --json`: one machine-readable view of data, models and deployments."""
from __future__ import annotations

import json

from visionzero.platform.settings import paths
from visionzero.data.versioning import read_version


def save_data_summary(summary: dict) -> None:
    paths().data_summary.parent.mkdir(parents=True, exist_ok=True)
    paths().data_summary.write_text(json.dumps(summary, indent=2))


def data_status() -> dict | None:
    if not paths().data_summary.exists():
        return None
    summary = json.loads(paths().data_summary.read_text())
    return {"version": read_version(paths().data_dir), "rows": summary["rows"],
            "complete_days": summary["complete_days"], "quarantined": summary["quarantined"],
            "source": summary["source"], "source_note": summary["source_note"],
            "first_date": summary["first_date"], "last_date": summary["last_date"]}


def models_status() -> dict:
    from visionzero.platform.registry import describe, stage_version

    out = {}
    for stage in ("production", "staging"):
        version = stage_version(stage)
        out[stage] = describe(version) if version is not None else None
    return out


def collect_status() -> dict:
    from visionzero.rollout.deployment_state import read_state

    state = read_state()
    deployments = {k: state.get(k) for k in ("production", "staging", "previous_production",
                                              "canary_weight", "updated_at")}
    return {"data": data_status(), "models": models_status(), "deployments": deployments}
