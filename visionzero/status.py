"""`run.py status --json`: one machine-readable view of data, models and deployments."""
from __future__ import annotations

import json

from visionzero.settings import paths
from visionzero.versioning import read_version


def data_status() -> dict | None:
    data_dir = paths().data_dir
    summary_path = data_dir / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    return {"version": read_version(data_dir), "rows": summary["rows"],
            "complete_days": summary["complete_days"], "quarantined": summary["quarantined"],
            "source": summary["source"], "source_note": summary["source_note"],
            "first_date": summary["first_date"], "last_date": summary["last_date"]}


def models_status() -> dict:
    from visionzero.registry import describe, stage_version

    out = {}
    for stage in ("production", "staging"):
        version = stage_version(stage)
        out[stage] = describe(version) if version is not None else None
    return out


def collect_status() -> dict:
    from visionzero.deployment import read_state

    state = read_state()
    deployments = {k: state.get(k) for k in ("production", "staging", "previous_production",
                                              "canary_weight", "updated_at")}
    return {"data": data_status(), "models": models_status(), "deployments": deployments}
