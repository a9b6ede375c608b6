"""Where project state lives. Everything defaults to a git-ignored folder in the repo; env vars override.

Tests point VZ_HOME and VZ_DATA_DIR at temporary folders so they never touch a user's stores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_DIR = REPO_ROOT / "snapshot"


@dataclass(frozen=True)
class Paths:
    """Locations of the local stores; resolved from the environment each time they are asked for."""

    home: Path
    data_dir: Path

    @property
    def zenml(self) -> Path:
        return self.home / "zenml"

    @property
    def mlflow(self) -> Path:
        return self.home / "mlflow"

    @property
    def bentoml(self) -> Path:
        return self.home / "bentoml"

    @property
    def dvc_remote(self) -> Path:
        return self.home / "dvc-remote"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox.jsonl"

    @property
    def deployment_state(self) -> Path:
        return self.home / "deployment.json"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def tuner_dir(self) -> Path:
        return self.home / "tuner"


def paths() -> Paths:
    home = Path(os.environ.get("VZ_HOME", REPO_ROOT / ".vz")).resolve()
    data_dir = Path(os.environ.get("VZ_DATA_DIR", REPO_ROOT / "data")).resolve()
    return Paths(home=home, data_dir=data_dir)


def configure_environment() -> Paths:
    """Point ZenML, MLflow and BentoML at the project stores unless the user configured them."""
    p = paths()
    p.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ZENML_CONFIG_PATH", str(p.zenml))
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_ENABLE_RICH_TRACEBACK", "false")
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "INFO")
    os.environ.setdefault("BENTOML_HOME", str(p.bentoml))
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("ZENML_AUTO_OPEN_DASHBOARD", "false")
    return p
