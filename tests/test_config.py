"""Settings and run configuration: one typed source, documented, validated before anything runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.training import InvalidConfig, TrainingParameters, load_training_config
from visionzero.platform.settings import REPO_ROOT, Settings, environment_table, settings


def test_readme_configuration_table_is_generated_from_the_settings() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", readme, re.S)
    assert block, "README.md lost its generated settings table markers"
    assert block.group(1) == environment_table(), (
        "README's table is stale: "
        "paste `python -m visionzero.platform.settings` between the markers"
    )


def test_no_module_reads_the_environment_outside_the_settings() -> None:
    """Variables are read in one place; the others only set what libraries read themselves."""
    readers = re.compile(r"os\.environ\.get|os\.environ\[|os\.getenv")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("visionzero", "steps", "pipelines")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if path.name != "settings.py" and readers.search(path.read_text())
    ]
    offenders += [
        name for name in ("run.py", "service.py") if readers.search((REPO_ROOT / name).read_text())
    ]
    assert offenders == []


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", "https://discord.example/api/webhooks/1/secret-token")
    monkeypatch.setenv("SOCRATA_APP_TOKEN", "app-token-value")
    shown = repr(settings()) + str(settings().model_dump())
    assert "secret-token" not in shown and "app-token-value" not in shown
    assert settings().discord_webhook_url.get_secret_value().endswith("secret-token")


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZ_DEPLOY_TARGET", "mars")
    with pytest.raises(ValueError, match="vz_deploy_target"):
        Settings()


def test_the_shipped_configuration_is_valid() -> None:
    assert load_training_config(REPO_ROOT / "configs" / "training.yaml") == TrainingParameters()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("parameters: {model: {resolutoin: 8}}", "parameters.model.resolutoin"),
        ("parameters: {model: {resolution: 99}}", "parameters.model.resolution"),
        ("parameters: {tuning: {max_trials: many}}", "parameters.tuning.max_trials"),
        ("steps: {}", "steps"),
    ],
)
def test_a_bad_configuration_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(InvalidConfig, match=re.escape(f"{path}: {key}:")):
        load_training_config(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("parameters: {canary: {min_forward_dayz: 3}}", "parameters.canary.min_forward_dayz"),
        ("parameters: {canary: {min_forward_days: 0}}", "parameters.canary.min_forward_days"),
        ("parameters: {drift: {p_value: 2}}", "parameters.drift.p_value"),
        ("parameters: {forward: {resolutions: []}}", "parameters.forward.resolutions"),
    ],
)
def test_a_bad_monitoring_configuration_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    from pipelines.monitoring import load_monitoring_config

    path = tmp_path / "monitoring.yaml"
    path.write_text(text)
    with pytest.raises(InvalidConfig, match=re.escape(f"{path}: {key}:")):
        load_monitoring_config(path)


def test_the_shipped_monitoring_configuration_is_valid() -> None:
    from pipelines.monitoring import load_monitoring_config

    params = load_monitoring_config(REPO_ROOT / "configs" / "monitoring.yaml")
    assert params.canary.min_forward_days == 14 and params.act is True


@pytest.mark.slow
def test_run_refuses_a_bad_configuration_before_any_step(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("parameters: {decision: {hit_rate_tolerance: -1}}")
    out = subprocess.run(
        [sys.executable, "run.py", "--offline", "--config", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "parameters.decision.hit_rate_tolerance" in out.stderr
    assert "Pipeline run" not in out.stdout + out.stderr
