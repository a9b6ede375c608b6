"""What run.py prints: one line per trial, plain text off a terminal, no harmless notices."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner

import run
from tests.conftest import LocalServer
from tests.fake_socrata import make_handler
from visionzero.data.http import RetryPolicy, SourceUnavailable, get_json
from visionzero.evaluation.decision import Decision
from visionzero.platform import output
from visionzero.rollout.actions import Deployment
from visionzero.rollout.deployment_state import DeploymentState
from visionzero.serving.bento_build import Release
from visionzero.status import format_status, training_summary

RELEASE_1 = Release(
    model_version=1, bento_tag="crash_risk:aaa", model_tag="nyc_crash_risk:a", arm64_bento_tag="a"
)
RELEASE_2 = Release(
    model_version=2, bento_tag="crash_risk:bbb", model_tag="nyc_crash_risk:b", arm64_bento_tag="b"
)


def deployment(summary: str, rollout: dict | None = None) -> Deployment:
    """The deployer's artifact as training_summary reads it (its own state is not read)."""
    return Deployment(changed="none", summary=summary, state=DeploymentState(), rollout=rollout)


@pytest.fixture(autouse=True)
def output_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_output() only sets what is unset: preset both so nothing leaks to other tests."""
    monkeypatch.setenv("ZENML_LOGGING_COLORS_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colours_only_on_a_terminal_without_no_color() -> None:
    assert output.colours_wanted(Tty(), None)
    assert not output.colours_wanted(io.StringIO(), None)
    assert not output.colours_wanted(Tty(), "1")


def test_configure_output_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZENML_LOGGING_COLORS_DISABLED")
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    output.configure_output()
    output.configure_output()  # idempotent: one filter per logger
    assert output.os.environ["ZENML_LOGGING_COLORS_DISABLED"] == "true"
    assert output.os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    for name, _ in output.HARMLESS_NOTICES:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, output.DropNotices) for f in filters) == 1


def record(name: str, msg: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_only_the_exact_harmless_notices_are_dropped() -> None:
    name, prefix = output.HARMLESS_NOTICES[0]
    drop = output.DropNotices((prefix,))
    assert not drop.filter(record(name, prefix))
    other = "Failed to disable MLflow autologging for the following frameworks: ['sklearn']."
    assert drop.filter(record(name, other))  # a real failure still shows


def test_api_retries_are_quiet_and_the_failure_is_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="visionzero.data.http")
    policy = RetryPolicy(max_attempts=3, backoff_seconds=0.01)
    with (
        LocalServer(make_handler([], ["500"] * 5, [])) as server,
        pytest.raises(SourceUnavailable, match="failed after 3 attempts"),
    ):
        get_json(requests.Session(), server.url, {}, {}, policy)
    loud = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("visionzero", "urllib3"))
    ]
    assert loud == []  # a retry that succeeds is no news; the caller reports the final failure


def test_tuner_logs_one_line_per_trial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    from visionzero.model.crash_risk import ModelConfig
    from visionzero.model.tuning import make_tuner, trial_line

    assert trial_line("03", {"max_depth": 3, "learning_rate": 0.048297}, 30.5527) == (
        "trial 03: CV Poisson deviance 30.553 | max_depth=3 learning_rate=0.0483"
    )
    caplog.set_level(logging.INFO, logger="visionzero.model.tuning")
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 3), dtype=np.float32), rng.poisson(5, 60)
    make_tuner(ModelConfig(), max_trials=2, n_splits=2, directory=tmp_path).search(X, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "visionzero.model.tuning"]
    assert len(lines) == 2 and all(line.startswith("trial ") for line in lines)
    assert "Search: Running Trial" not in capsys.readouterr().out


def test_training_summary_first_production() -> None:
    decision = Decision(
        model_version=1,
        action="production",
        deployable=True,
        reasons=["...", ("no production model: the first deployable model becomes production")],
    )
    deployed = deployment("production: model 1 (crash_risk:aaa)", {"target": "local"})
    state = DeploymentState(production=RELEASE_1, staging=None, canary_weight=50)
    assert training_summary(decision, deployed, state).splitlines() == [
        (
            "Decision for model version 1: production (no production model: the first deployable "
            "model becomes production)"
        ),
        "Deployment: production: model 1 (crash_risk:aaa)",
        "Serving now: production v1 (crash_risk:aaa, 100% of traffic)",
        "Next: python run.py serve --port 3000",
    ]


def test_training_summary_canary_and_nothing_deployed() -> None:
    decision = Decision(
        model_version=2, action="staging", deployable=True, reasons=["challenger wins"]
    )
    state = DeploymentState(production=RELEASE_1, staging=RELEASE_2, canary_weight=50)
    text = training_summary(decision, deployment("staging: model 2 (crash_risk:bbb)"), state)
    assert "production v1 (crash_risk:aaa, 50% of traffic); staging v2 (crash_risk:bbb, 50%" in text
    assert text.endswith("Then: python run.py promote   (or python run.py rollback)")
    none = training_summary(
        Decision(model_version=1, action="none", deployable=False, reasons=["not deployable"]),
        deployment("no change"),
        DeploymentState(production=None, staging=None),
    )
    assert "Serving now: nothing (no production model yet)" in none
    assert none.endswith("Next: python run.py report   (why this model was not deployed)")


def test_training_summary_kubernetes_apply_failed() -> None:
    rollout = {
        "target": "kubernetes",
        "manifests": "/x/k8s",
        "apply_error": "KUBECONFIG is not set",
    }
    text = training_summary(
        Decision(model_version=1, action="production", deployable=True, reasons=["r"]),
        deployment("production", rollout),
        DeploymentState(production=RELEASE_1, staging=None),
    )
    assert text.endswith("Next: kubectl apply -f /x/k8s   (KUBECONFIG is not set)")


STATUS = {
    "data": {
        "version": "abc.dir",
        "rows": 10,
        "complete_days": 2,
        "quarantined": {"counts": 1},
        "source": "snapshot",
        "source_note": "offline",
        "first_date": "2024-01-01",
        "last_date": "2024-01-02",
    },
    "models": {
        "production": {
            "version": 1,
            "metrics": {"poisson_deviance": 0.52471, "hit_rate_at_10": 0.29693},
            "data_version": "abc.dir",
            "training_window": ["2013-01-01", "2024-03-31"],
        },
        "staging": None,
    },
    "deployments": {
        "production": RELEASE_1.model_dump(),
        "staging": RELEASE_2.model_dump(),
        "previous_production": None,
        "canary_weight": 50,
        "updated_at": "2026-01-01T00:00:00+00:00",
    },
}


def test_format_status_tables() -> None:
    lines = format_status(STATUS).splitlines()
    assert lines[0] == "Data" and "  quarantined  counts 1" in lines
    production = next(line for line in lines if line.startswith("  production  1"))
    assert production.split() == [
        "production",
        "1",
        "0.5247",
        "0.2969",
        "abc.dir",
        "2013-01-01",
        "..",
        "2024-03-31",
    ]
    assert "  staging     -" in lines
    deployments = lines.index("Deployments (updated 2026-01-01T00:00:00+00:00)")
    assert [line.split()[-1] for line in lines[deployments + 2 : deployments + 4]] == ["50%", "50%"]
    assert lines[-2:] == ["Monitoring", "  never run: `python run.py monitor`"]
    assert format_status({"data": None, "models": {}, "deployments": {}}).startswith(
        "Data\n  none yet: `python run.py` loads it"
    )


def test_format_status_shows_the_last_monitoring_run() -> None:
    interval = {"estimate": 0.0341, "low": 0.033, "high": 0.035}
    summary = {
        "at": "2026-01-02T03:04:05+00:00",
        "resolution": 9,
        "forward": {
            "production": {
                "model_version": 1,
                "days": 20,
                "model_poisson_deviance": interval,
                "model_hit_rate_at_10": {**interval, "estimate": 0.41},
                "status_quo_poisson_deviance": {**interval, "estimate": 0.044},
            },
            "staging": {"model_version": 2, "days": 0},
        },
        "drift_flags": ["data:borough mix"],
        "canary": {"action": "wait", "outcome": "nothing to do", "reasons": ["wait 14 more"]},
        "retrain": {"retrain": True, "reasons": []},
    }
    lines = format_status({**STATUS, "monitoring": summary}).splitlines()
    start = lines.index("Monitoring (last run 2026-01-02T03:04:05+00:00, res 9)")
    assert lines[start + 2].split() == ["production", "1", "20", "0.0341", "0.4100", "0.0440"]
    assert lines[start + 3].split() == ["staging", "2", "0", "-"]
    assert lines[start + 4 :] == [
        "  drift flags: data:borough mix",
        "  canary: wait (nothing to do)",
        "    - wait 14 more",
        "  retrain: yes",
    ]


def test_status_command_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("visionzero.status.collect_status", lambda: STATUS)
    text = CliRunner().invoke(run.cli, ["status"])
    assert text.exit_code == 0 and text.output == format_status(STATUS) + "\n"
    as_json = CliRunner().invoke(run.cli, ["status", "--json"])
    assert as_json.exit_code == 0 and as_json.output.startswith('{\n  "data": {')


def test_dashboard_stop_runs_zenml_logout_with_the_project_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], str]] = []
    monkeypatch.setattr(
        subprocess,
        "call",
        lambda args: calls.append((args, os.environ["ZENML_CONFIG_PATH"])) or 0,
    )
    result = CliRunner().invoke(run.cli, ["dashboard", "--stop"])
    assert result.exit_code == 0
    assert calls == [
        (
            [str(Path(sys.executable).parent / "zenml"), "logout", "--local"],
            os.environ["ZENML_CONFIG_PATH"],
        )
    ]


def test_mlflow_ui_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("visionzero.platform.stack.ensure_stack", lambda: None)
    monkeypatch.setattr(
        "visionzero.platform.registry.mlflow_tracking_uri", lambda: "http://mlflow.example:5000"
    )
    remote = CliRunner().invoke(run.cli, ["mlflow-ui"])
    assert remote.exit_code == 0 and "open its UI there" in remote.output

    started: list[list[str]] = []

    class Finished:
        pid, returncode = 0, 0

        def __init__(self, args: list[str], **_: object) -> None:
            started.append(args)

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(
        "visionzero.platform.registry.mlflow_tracking_uri", lambda: "sqlite:////tmp/x/mlflow.db"
    )
    monkeypatch.setattr(subprocess, "Popen", Finished)
    monkeypatch.setattr("signal.signal", lambda *_: None)
    local = CliRunner().invoke(run.cli, ["mlflow-ui", "--port", "5001"])
    assert local.exit_code == 0 and "http://127.0.0.1:5001" in local.output
    assert started[0][1:] == [
        "ui",
        "--backend-store-uri",
        "sqlite:////tmp/x/mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        "5001",
        "--workers",
        "1",
    ]
