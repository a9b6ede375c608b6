"""Stages and hand-offs fail closed.

The deployment state is the one source of truth for stages: ZenML stages and MLflow aliases follow
it after every deploy, promote and rollback, and nothing else moves them. A model is compared with
production only on its own grain. A pipeline run leaves no temporary model folder behind.

The pipeline tests run after `trained` (a first production model) in the session's stores.
"""

from __future__ import annotations

import importlib
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import LocalServer, small_budget_config
from visionzero.rollout import deployment_state as deployment
from visionzero.rollout.deployment_state import DeploymentState

pytestmark = pytest.mark.faults
slow = pytest.mark.slow  # these run the pipeline

LOSE = {"min_deviance_improvement": 1.0}  # needs a deviance <= 0: a challenger never wins
WIN = {"min_deviance_improvement": -1.0, "hit_rate_tolerance": 1.0}  # any deployable one wins


def run_pipeline(tmp: Path, decision: dict) -> None:
    from run import train

    train(offline=True, config_path=small_budget_config(tmp, decision=decision))


def newest_decision() -> object:
    """The decision of the newest pipeline run, also when a later step failed."""
    from zenml.client import Client

    run = (
        Client()
        .list_pipeline_runs(pipeline_name="training_pipeline", sort_by="desc:created", size=1)
        .items[0]
    )
    return run.steps["trigger_decision"].outputs["decision"][0].load()


def registry_view() -> dict:
    """Who holds production and staging: ZenML's Model Control Plane and MLflow's aliases."""
    from zenml.client import Client

    from visionzero.platform.registry import _mlflow_client
    from visionzero.platform.settings import MODEL_NAME

    versions = Client().list_model_versions(model=MODEL_NAME, size=1000).items
    client = _mlflow_client()
    aliases = client.get_registered_model(MODEL_NAME).aliases
    return {
        "zenml": {
            v.number: str(v.stage) for v in versions if str(v.stage) in ("production", "staging")
        },
        "mlflow": {
            alias: int(client.get_model_version(MODEL_NAME, v).tags["zenml_model_version"])
            for alias, v in aliases.items()
        },
    }


def expected_view(state: DeploymentState) -> dict:
    """What the registries must show for a deployment state: its stages, nothing else."""
    held = {stage: release.model_version for stage, release in state.serving().items()}
    return {"zenml": {v: stage for stage, v in held.items()}, "mlflow": held}


@pytest.fixture(scope="module")
def none_run(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A challenger that cannot win, run while the registry is stale: production's ZenML stage was
    archived behind the state's back (as a failed sync leaves it). The evaluator must still compare
    with the state's production; nothing may change; no temporary model folder may remain."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    from visionzero.platform.settings import MODEL_NAME

    tmp = tmp_path_factory.mktemp("none-run")
    private_tmp = tmp / "tmp"
    private_tmp.mkdir()
    state_before = deployment.read_state()
    production = state_before.production.model_version
    Client().get_model_version(MODEL_NAME, production).set_stage(ModelStages.ARCHIVED, force=True)
    registry_before = registry_view()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(private_tmp))
        run_pipeline(tmp, LOSE)
    return {
        "decision": newest_decision(),
        "production": production,
        "state_before": state_before,
        "state_after": deployment.read_state(),
        "registry_before": registry_before,
        "registry_after": registry_view(),
        "leftovers": sorted(
            p.name
            for p in private_tmp.iterdir()
            if p.name.startswith(("crash_model_", "evaluation_"))
        ),
    }


@slow
def test_a_losing_challenger_is_compared_with_the_state_production_and_changes_nothing(
    none_run: dict,
) -> None:
    decision = none_run["decision"]
    assert decision.action == "none", decision.reasons
    assert decision.production_version == none_run["production"]
    assert any("vs production" in reason for reason in decision.reasons)
    assert none_run["state_after"] == none_run["state_before"]
    assert none_run["registry_after"] == none_run["registry_before"]


@slow
def test_the_pipeline_leaves_no_temporary_model_folder(none_run: dict) -> None:
    assert none_run["leftovers"] == []


@pytest.fixture(scope="module")
def failed_build(none_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A winning challenger whose Bento build fails (injected): nothing was deployed."""
    from visionzero.platform.settings import paths
    from visionzero.rollout.actions import sync_registry_stages

    sync_registry_stages(deployment.read_state())  # the registry in line again
    registry_before, state_before = registry_view(), deployment.read_state()
    builder = importlib.import_module("steps.serving.bento_builder")

    def broken_build(*args: object, **kwargs: object) -> str:
        raise RuntimeError("injected: the Bento build failed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builder, "build_bento", broken_build)
        with pytest.raises(Exception) as failure:  # noqa: B017 - ZenML wraps the step's error
            run_pipeline(tmp_path_factory.mktemp("failed-build"), WIN)
    alerts = paths().outbox.read_text().splitlines()
    return {
        "error": f"{failure.value} / alert: {alerts[-1]}",
        "decision": newest_decision(),
        "state_before": state_before,
        "state_after": deployment.read_state(),
        "registry_before": registry_before,
        "registry_after": registry_view(),
    }


@slow
def test_a_failed_bento_build_moves_no_stage_and_no_deployment(failed_build: dict) -> None:
    assert "bento_builder" in failed_build["error"] and "injected" in failed_build["error"]
    assert failed_build["decision"].action == "staging"  # it would have been deployed
    assert failed_build["state_after"] == failed_build["state_before"]
    assert failed_build["registry_after"] == failed_build["registry_before"]
    assert failed_build["registry_after"] == expected_view(failed_build["state_after"])


@pytest.fixture(scope="module")
def challenger(failed_build: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A winning challenger deployed by the pipeline: the staging release of the state."""
    run_pipeline(tmp_path_factory.mktemp("challenger"), WIN)
    state = deployment.read_state()
    assert state.staging is not None, "the challenger should have become staging"
    return state.staging


@slow
def test_registry_follows_the_state_through_deploy_rollback_and_promote(challenger: dict) -> None:
    from visionzero.rollout.actions import deploy, promote_or_rollback

    assert registry_view() == expected_view(deployment.read_state())  # after the pipeline deploy
    rolled_back = promote_or_rollback("rollback")
    assert rolled_back.changed and rolled_back.registry_error is None
    state = deployment.read_state()
    assert state.staging is None
    assert registry_view() == expected_view(state)  # no stale staging

    redeployed = deploy("staging", challenger, "local")
    assert redeployed.changed == "staging" and redeployed.registry_error is None
    assert registry_view() == expected_view(deployment.read_state())

    promoted = promote_or_rollback("promote")
    assert promoted.changed and promoted.registry_error is None
    state = deployment.read_state()
    assert state.production.model_version == challenger.model_version
    assert registry_view() == expected_view(state)  # the promoted staging is staging no more

    assert promote_or_rollback("rollback").changed
    assert registry_view() == expected_view(deployment.read_state())


class MlflowDown(BaseHTTPRequestHandler):
    """An MLflow server that answers every call with 503."""

    def answer(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = answer

    def log_message(self, *args: object) -> None:
        pass


@slow
def test_a_failing_registry_never_changes_the_recorded_deployment(
    challenger: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionzero.platform import registry
    from visionzero.rollout.actions import deploy, promote_or_rollback, sync_registry_stages

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with LocalServer(MlflowDown) as down, pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "mlflow_tracking_uri", lambda: down.url)
        deployed = deploy("staging", challenger, "local")
        assert deployed.changed == "staging" and deployed.registry_error
        assert deployment.read_state().staging == challenger  # recorded, and kept
        rolled_back = promote_or_rollback("rollback")
        assert rolled_back.changed and rolled_back.registry_error
        assert deployment.read_state().staging is None
    sync_registry_stages(deployment.read_state())  # MLflow is back: the next sync repairs it
    assert registry_view() == expected_view(deployment.read_state())


@pytest.fixture(scope="module")
def small_city(real_data_dir: Path) -> tuple:
    """Lower Manhattan over the last 150 complete days of the bundled snapshot: small and real."""
    from visionzero.data.dataset import load_frames

    crashes, complete, weather = load_frames(real_data_dir)
    box = crashes["latitude"].between(40.70, 40.76) & crashes["longitude"].between(-74.02, -73.97)
    return crashes[box], complete.sort_values("date").tail(150), weather


def fit(frames: tuple, resolution: int, block_hours: int) -> tuple:
    from visionzero.model.crash_risk import ModelConfig, prepare, split_days, train

    cfg = ModelConfig(resolution=resolution, block_hours=block_hours, holdout_days=30)
    prepared = prepare(*frames, cfg)
    train_days, holdout_days = split_days(prepared.days["date"], cfg.holdout_days)
    model = train(prepared, train_days, {"n_estimators": 20, "max_depth": 2}, cfg, None)
    return prepared, train_days, holdout_days, model


def test_production_of_another_grain_is_not_scored_on_the_candidate_grid(small_city: tuple) -> None:
    """Re-scoring a res-7 production on res-8 zones it never saw made any challenger 'win'."""
    from visionzero.evaluation.decision import DecisionRule, decide
    from visionzero.evaluation.holdout import evaluate

    *coarse_data, coarse = fit(small_city, 7, 4)
    *fine_data, fine = fit(small_city, 8, 4)
    same = evaluate(*coarse_data, coarse, coarse, production_version=1)
    assert same.production == same.candidate and same.production_not_comparable is None

    report = evaluate(*fine_data, fine, coarse, production_version=1)
    assert report.production is None and report.production_version == 1
    reason = "production has grain res 7..9/4h, candidate res 8..9/4h: not comparable"
    assert report.production_not_comparable == reason
    decision = decide(report, DecisionRule())
    assert decision.action == "none"
    assert any(reason in line for line in decision.reasons), decision.reasons


def test_a_production_whose_recipe_cannot_be_rebuilt_is_not_comparable(small_city: tuple) -> None:
    """Filling what an old production did not record with today's defaults scored a different
    model under production's name; an unrecorded recipe is now 'not comparable'."""
    from dataclasses import replace

    from visionzero.evaluation.backtest import recipe_config
    from visionzero.evaluation.holdout import evaluate

    *data, model = fit(small_city, 7, 4)
    config = model.meta["config"]
    no_params = replace(model, meta={k: v for k, v in model.meta.items() if k != "params"})
    lacking = replace(
        model,
        meta={
            **model.meta,
            "config": {k: v for k, v in config.items() if k != "finest_resolution"},
        },
    )
    for production, why in ((no_params, "no configuration"), (lacking, "lacks finest_resolution")):
        report = evaluate(*data, model, production, production_version=1)
        assert report.production is None
        assert "cannot be refit" in report.production_not_comparable and why in (
            report.production_not_comparable
        )
    saved_before_neighbours = replace(
        model,
        meta={
            **model.meta,
            "config": {k: v for k, v in config.items() if k != "child_neighbour_weight"},
        },
    )
    assert recipe_config(saved_before_neighbours).child_neighbour_weight == 0.0
