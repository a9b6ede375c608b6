"""The monitoring pipeline offline on the trained store: every step runs, the summary reaches
`status --json`, and with nothing to judge yet the canary changes nothing."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow

needs_log = pytest.mark.skipif(
    importlib.util.find_spec("visionzero.serving.prediction_log") is None,
    reason="visionzero.serving.prediction_log (the prediction log) is not in this tree yet",
)


@needs_log
def test_monitor_runs_offline_and_reports_in_status(trained: dict) -> None:
    import run
    from visionzero.rollout.deployment_state import read_state

    before = read_state()
    result = CliRunner().invoke(run.cli, ["monitor", "--offline"])
    assert result.exit_code == 0, result.output
    assert "Canary: none" in result.output  # production only: no canary to judge
    status = json.loads(CliRunner().invoke(run.cli, ["status", "--json"]).output)
    monitoring = status["monitoring"]
    assert monitoring["canary"]["action"] == "none"
    # the served production fit saw every complete day: no forward days yet, so no retraining
    assert monitoring["forward"]["production"]["days"] == 0
    assert monitoring["retrain"]["retrain"] is False
    assert read_state().production == before.production
