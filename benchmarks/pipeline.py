"""A cold training-pipeline run (fresh, temporary ZenML/MLflow/BentoML/DVC stores, default tuning
budget), printing the wall time of each step.

Run: .venv/bin/python benchmarks/pipeline.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix="vz-bench-"))
os.environ.update(
    {
        "VZ_HOME": str(TMP / "home"),
        "VZ_DATA_DIR": str(TMP / "project" / "data"),
        "ZENML_CONFIG_PATH": str(TMP / "home" / "zenml"),
        "BENTOML_HOME": str(TMP / "home" / "bentoml"),
    }
)
for var in ("DISCORD_WEBHOOK_URL", "MLFLOW_TRACKING_URI", "ZENML_STORE_URL", "KUBECONFIG"):
    os.environ.pop(var, None)
sys.path.insert(0, str(ROOT))


def main() -> None:
    from run import DEFAULT_CONFIG, train
    from visionzero.platform.settings import configure_environment

    configure_environment()
    start = time.perf_counter()
    run = train(offline=True, config_path=DEFAULT_CONFIG)
    total = time.perf_counter() - start
    print(f"\ncold pipeline run on {os.cpu_count()} cores (fresh stores in {TMP}):")
    for name, step in run.steps.items():
        seconds = (step.end_time - step.start_time).total_seconds()
        print(f"  {name:<18} {seconds:7.2f} s")
    print(
        f"  {'total (wall)':<18} {total:7.2f} s  "
        "(including ZenML stack set-up and imports after start)"
    )
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
