"""The typed deployment records read what the dict-based code wrote, and write it back unchanged:
`deployment.json` (the state), `serve.json` (a running serve), `monitoring.json` (the last
monitor). Stage names are one `Stage`, equal to the strings the files and environment hold."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.test_k8s import release
from visionzero.platform.settings import Settings
from visionzero.platform.stage import STAGES, Stage
from visionzero.rollout import deployment_state as deployment
from visionzero.rollout.kubernetes import render
from visionzero.rollout.local_canary import clear_stale
from visionzero.rollout.serve_record import ServeRecord, load_serve_record, save_serve_record

# Written by the dict-based code of ed486a3 (deploy 1, canary 2, promote, canary 3).
OLD_STATE = Path(__file__).parent / "data" / "deployment_ed486a3.json"


def test_a_state_written_by_the_old_code_loads_typed(tmp_path: Path) -> None:
    state = deployment.read_state(OLD_STATE)
    assert state.production == release(2) and state.staging == release(3)
    assert state.previous_production == release(1)
    assert state.canary_weight == 50 and deployment.staging_weight(state) == 50
    assert [(e.event, e.model_version) for e in state.history] == [
        ("deploy_production", 1),
        ("deploy_staging", 2),
        ("promote", 2),
        ("deploy_staging", 3),
    ]
    assert list(state.serving()) == [Stage.PRODUCTION, Stage.STAGING]
    assert deployment.require_production(state).bento_tag == "crash_risk:b2"


def test_the_state_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    """A state that is read and written again is the same file: old readers (and a rollback to
    the old code) read what the typed code writes."""
    path = tmp_path / "deployment.json"
    deployment.write_state(path, deployment.read_state(OLD_STATE))
    assert path.read_text() == OLD_STATE.read_text()
    shutil.copy(OLD_STATE, path)
    with deployment.locked_state(path) as state:
        deployment.promote(state)  # a change is written in the same format, with its event
    written = json.loads(path.read_text())
    old = json.loads(OLD_STATE.read_text())
    assert list(written) == list(old)
    assert written["production"] == old["staging"] and written["staging"] is None
    assert written["history"][:-1] == old["history"]
    assert written["history"][-1].keys() == {"event", "at", "model_version"}


def test_an_empty_or_missing_state_has_no_production(tmp_path: Path) -> None:
    for state in (deployment.read_state(tmp_path / "none.json"), deployment.parse_state("")):
        assert state.production is None and state.serving() == {}
        with pytest.raises(deployment.NoProduction, match="no production model yet"):
            deployment.require_production(state)
    with pytest.raises(deployment.NoProduction):
        render(deployment.DeploymentState(), tmp_path / "k8s")
    with pytest.raises(ValueError):
        deployment.parse_state('{"production": {"model_version": "one"}}')


def test_a_release_assigned_as_a_dict_is_validated() -> None:
    state = deployment.DeploymentState()
    state.staging = release(4).model_dump()
    assert state.staging == release(4)
    with pytest.raises(ValidationError):
        state.production = {"model_version": 5}


def test_serve_record_round_trips_and_reads_the_old_format(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    old = {  # what the dict-based serve wrote (json.dumps of a dict)
        "pid": 123,
        "port": 3000,
        "workdir": "/tmp/vz-serve-x",
        "groups": {"nginx": 456},
        "backends": {"production": "http://127.0.0.1:4000"},
        "prometheus_url": None,
    }
    path.write_text(json.dumps(old))
    record = load_serve_record(path)
    assert record == ServeRecord(**old)
    save_serve_record(path, record)
    assert path.read_text() == json.dumps(old)
    path.write_text("{half a rec")
    assert load_serve_record(path) is None
    assert load_serve_record(tmp_path / "missing.json") is None


def test_an_unreadable_serve_record_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"pid": os.getpid()}))  # no workdir, no groups
    assert clear_stale(path) == [] and not path.exists()


def test_stage_is_the_string_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    assert STAGES == ("production", "staging")
    assert f"crash-risk-{Stage.STAGING}" == "crash-risk-staging"
    assert json.dumps({Stage.PRODUCTION: Stage.STAGING}) == '{"production": "staging"}'
    monkeypatch.setenv("VZ_STAGE", "staging")
    assert Settings().vz_stage is Stage.STAGING
    monkeypatch.setenv("VZ_STAGE", "archived")
    with pytest.raises(ValidationError, match="vz_stage"):
        Settings()


def test_the_monitoring_summary_reads_its_parts_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionzero.monitoring.summary import load_summary, summary_path

    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    written = {  # the file as the dict-based summary wrote it
        "at": "2026-01-02T03:04:05+00:00",
        "resolution": 9,
        "forward": {"production": {"model_version": 1, "days": 0, "unscored": "no day yet"}},
        "paired": None,
        "drift_flags": [],
        "canary": {"action": "wait", "reasons": ["wait 14 more"], "staging_version": 2},
        "retrain": {"retrain": False, "reasons": []},
    }
    summary_path().write_text(json.dumps(written))
    summary = load_summary()
    assert summary.canary.action == "wait" and summary.canary.staging_version == 2
    assert summary.retrain.retrain is False
