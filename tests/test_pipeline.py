"""The whole training pipeline, twice, in temporary ZenML/MLflow/BentoML/DVC stores.

Then `status --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, small_budget_config

pytestmark = pytest.mark.slow  # integration tier: see pyproject.toml


def status() -> dict:
    out = subprocess.run(
        [sys.executable, "run.py", "status", "--json"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_first_run_makes_a_production_model(trained: dict) -> None:
    state = status()
    data = state["data"]
    assert data["rows"] == 351_052 and data["complete_days"] == 632
    assert data["source"] == "snapshot" and data["quarantined"] == {}
    assert data["version"].endswith(".dir")
    production = state["models"]["production"]
    assert production["data_version"] == data["version"]
    assert set(production["metrics"]) == {
        "poisson_deviance",
        "hit_rate_at_10",
        "hit_rate_at_5",
        "pai_at_10",
        "qwk",
    }
    assert set(production["baseline_metrics"]) == set(production["metrics"])
    assert production["training_window"][0] < production["training_window"][1]
    assert trained.production.bento_tag.startswith("crash_risk:")
    assert trained.production.arm64_bento_tag.startswith("crash_risk_arm64:")
    assert state["deployments"]["production"]["model_version"] == production["version"]


def test_second_run_compares_with_production_on_the_same_holdout(
    trained: dict, tmp_path: Path
) -> None:
    from zenml.client import Client

    from run import train
    from visionzero.platform.settings import MODEL_NAME

    production = status()["models"]["production"]["version"]
    newest = Client().get_model_version(MODEL_NAME).number  # other tests may have trained more
    train(offline=True, config_path=small_budget_config(tmp_path))
    latest = Client().get_model_version(MODEL_NAME)
    assert latest.number == newest + 1
    decision = latest.run_metadata["decision"]
    assert decision["production_version"] == production
    assert any("vs production" in reason for reason in decision["reasons"])
    same_holdout = latest.run_metadata["production_metrics_same_holdout"]
    assert same_holdout["poisson_deviance"] > 0
    outbox = [
        json.loads(line)
        for line in (ROOT / os.environ["VZ_HOME"] / "outbox.jsonl").read_text().splitlines()
    ]
    assert len(outbox) >= 2 and outbox[-1]["title"].startswith(f"Crash-risk model v{latest.number}")


def test_the_closing_summary_reads_the_run_back(trained: dict) -> None:
    from zenml.client import Client

    from visionzero.rollout.deployment_state import read_state
    from visionzero.status import training_outputs, training_summary

    run = Client().list_pipeline_runs(
        pipeline_name="training_pipeline", status="completed", sort_by="desc:created", size=1
    )
    text = training_summary(*training_outputs(run.items[0].id), read_state())
    production = read_state().production
    assert f"Serving now: production v{production.model_version}" in text
    assert text.splitlines()[-1].startswith("Next: python run.py ")


def test_typed_artifacts_visualization_and_model_card(trained: dict) -> None:
    from zenml.client import Client
    from zenml.enums import ArtifactType, VisualizationType

    from visionzero.evaluation.holdout import EvaluationReport
    from visionzero.platform.settings import MODEL_NAME

    run = Client().get_pipeline(name_id_or_prefix="training_pipeline").last_run
    steps = run.steps
    assert steps["refitter"].outputs["crash_model"][0].type == ArtifactType.MODEL
    served = steps["refitter"].outputs["crash_model"][0].load()
    scored = steps["trainer"].outputs["scored_model"][0].load()
    assert served.meta["training_window"][1] > scored.meta["training_window"][1]  # holdout too
    assert isinstance(steps["evaluator"].outputs["evaluation_report"][0].load(), EvaluationReport)
    page = steps["evaluator"].outputs["evaluation_visualization"][0]
    assert [v.type for v in page.visualizations] == [VisualizationType.HTML]
    assert "hit_rate_at_10" in page.load() and "data:image/png;base64," in page.load()
    model = Client().get_model(MODEL_NAME)
    assert model.limitations and "complete days" in model.limitations
    assert model.use_cases and model.audience and model.ethics


def test_tuned_shares_land_in_the_trained_model(trained: dict) -> None:
    from zenml.client import Client

    from visionzero.model.tuning import SHARE_SPACE, TunedParams

    run = Client().get_pipeline(name_id_or_prefix="training_pipeline").last_run
    tuner = run.steps["hp_tuner"]
    tuned = tuner.outputs["tuned_params"][0].load()
    assert isinstance(tuned, TunedParams)
    assert set(tuned.shares) == {dim.name for dim in SHARE_SPACE} and tuned.volume
    assert tuner.run_metadata["share_tuning"]["best_params"] == tuned.shares
    model = run.steps["refitter"].outputs["crash_model"][0].load()
    assert {k: model.meta["config"][k] for k in tuned.shares} == tuned.shares
    assert model.meta["params"] == tuned.volume
