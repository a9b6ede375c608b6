"""DVC versioning of the data folder.

`dvc add` + push to the default remote; the md5 is the data version.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from visionzero.platform.settings import paths

log = logging.getLogger(__name__)


def _ensure_repo(root: Path) -> None:
    """The project repo ships .dvc/; a temporary data folder (tests) gets a DVC repo of its own."""
    if (root / ".dvc").is_dir():
        return
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=not (root / ".git").exists(), force=True)


def _ensure_remote(root: Path) -> None:
    """Configured remote wins (e.g. S3/MinIO via `dvc remote add -d`).

    Otherwise a local folder in VZ_HOME.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if repo.config["core"].get("remote"):
            return
    with Repo(str(root)).config.edit("local") as conf:
        conf["remote"]["local"] = {"url": str(paths().dvc_remote)}
        conf["core"]["remote"] = "local"


def version_data_dir(data_dir: Path) -> str:
    """Track data_dir with DVC, push it, and return its md5 (the dataset version).

    DVC's own INFO notes (e.g. "Initialized DVC repository.") are for its CLI users, so they are
    muted here; importing dvc resets its loggers to INFO, hence the context manager."""
    from dvc.logger import set_loggers_level
    from dvc.repo import Repo

    root = data_dir.parent
    with set_loggers_level(logging.WARNING):
        _ensure_repo(root)
        _ensure_remote(root)
        with Repo(str(root)) as repo:
            repo.scm_context.quiet = True  # the pipeline, not the user, runs `dvc add`: no hints
            repo.add(str(data_dir))
            try:
                repo.push()
            except Exception as exc:  # noqa: BLE001 - a failing remote must not lose the data
                log.warning("dvc push failed (%s); data stays in the local cache", exc)
    return read_version(data_dir)


def read_version(data_dir: Path) -> str | None:
    meta = data_dir.parent / f"{data_dir.name}.dvc"
    if not meta.exists():
        return None
    outs = yaml.safe_load(meta.read_text()).get("outs", [])
    return outs[0]["md5"] if outs else None
