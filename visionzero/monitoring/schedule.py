"""When the pipelines run by themselves: crontab lines for one machine (k8s/ has the CronJobs).

The schedules are defined once here; the CronJobs in k8s/ and the README's ZenML schedule use the
same expressions (a test checks they agree). Both pipelines take one lock file, so a monitoring run
never overlaps a training run (the monitor may itself start training) nor another monitoring run.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from visionzero.platform.settings import REPO_ROOT, paths

MONITOR_CRON = "30 6 * * *"  # daily, after the city's overnight data refresh
TRAIN_CRON = "0 3 * * 1"  # weekly, Monday night
LOCK_WAIT_SECONDS = 3600  # a run waits this long for the other one, then gives up (logged)
JOBS = {"monitor": (MONITOR_CRON, ["monitor"]), "train": (TRAIN_CRON, [])}


def project_python() -> Path:
    """The checkout's venv (what `make` creates), else the interpreter running now; absolute but
    not resolved: a venv's python is a symlink, and following it would leave the venv."""
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable).absolute()


def crontab_lines(
    home: Path, python: Path | None = None, repo: Path = REPO_ROOT, data_dir: Path | None = None
) -> list[str]:
    """One line per pipeline: cd to the checkout, source `$VZ_HOME/cron.env` when present (the
    secrets, kept out of the crontab), wait for the shared lock, append to `$VZ_HOME/logs/`. The
    stores are named by absolute path: cron starts in another folder with none of our variables."""
    python = python or project_python()
    home, data_dir = home.absolute(), (data_dir or paths().data_dir).absolute()
    logs, lock, env_file = home / "logs", home / "pipelines.lock", home / "cron.env"
    q = shlex.quote
    lines = [
        "# Vision Zero Risk (python run.py schedule --print): monitoring daily, training weekly.",
        f"# Secrets (DISCORD_WEBHOOK_URL, ...) go in {env_file} (chmod 600), not here.",
    ]
    for name, (cron, args) in JOBS.items():
        command = " ".join(q(part) for part in [str(python), "run.py", *args])
        lines.append(
            f"{cron} cd {q(str(repo))} && mkdir -p {q(str(logs))} && "
            f"{{ [ ! -f {q(str(env_file))} ] || {{ set -a; . {q(str(env_file))}; set +a; }}; }} && "
            f"VZ_HOME={q(str(home))} VZ_DATA_DIR={q(str(data_dir))} "
            f"flock -w {LOCK_WAIT_SECONDS} {q(str(lock))} {command} "
            f">> {q(str(logs / f'{name}.log'))} 2>&1"
        )
    return lines
