"""DVC versioning of the data folder.

`dvc add` + push to the default remote; the md5 is the data version. A run reads its version from
a folder of that version's own ($VZ_HOME/datasets/<md5>), checked by hash and materialised from the
DVC cache (or remote) when missing or changed: the next run rewrites data/, never that folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import yaml

from visionzero.platform.settings import paths, settings

log = logging.getLogger(__name__)


class DataVersionMismatch(RuntimeError):
    """The data version a run recorded can no longer be read: refuse rather than read another."""


def _ensure_repo(root: Path) -> None:
    """The project repo ships .dvc/; a temporary data folder (tests) gets a DVC repo of its own."""
    if (root / ".dvc").is_dir():
        return
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=not (root / ".git").exists(), force=True)


DVC_REMOTE_NAME = "vz"  # the remote VZ_DVC_REMOTE names, in the repo's untracked local config


def dvc_remote_config() -> dict[str, str] | None:
    """The remote VZ_DVC_REMOTE asks for (None: unset). A folder becomes an absolute path (DVC
    reads a relative one from the config file's folder); an s3:// remote takes the S3 endpoint
    (MinIO). Credentials stay in the environment, where DVC's S3 client finds them."""
    current = settings()
    if not current.vz_dvc_remote:
        return None
    url = current.vz_dvc_remote
    if "://" not in url:
        return {"url": str(Path(url).expanduser().resolve())}
    remote = {"url": url}
    if url.startswith("s3://") and current.vz_s3_endpoint_url:
        remote["endpointurl"] = current.vz_s3_endpoint_url
    return remote


def _ensure_remote(root: Path) -> None:
    """VZ_DVC_REMOTE wins, written to the untracked `local` config level so the committed
    `.dvc/config` stays (and unset again, it is removed there); otherwise the configured remote
    (e.g. `dvc remote add -d`); otherwise a folder in VZ_HOME."""
    from dvc.repo import Repo

    wanted = dvc_remote_config()
    with Repo(str(root)).config.edit("local") as conf:
        if wanted is not None:
            conf["remote"][DVC_REMOTE_NAME] = wanted
            conf["core"]["remote"] = DVC_REMOTE_NAME
            return
        conf["remote"].pop(DVC_REMOTE_NAME, None)
        if conf["core"].get("remote") == DVC_REMOTE_NAME:
            del conf["core"]["remote"]
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


def dataset_hash(folder: Path) -> str:
    """DVC's md5 of a folder (`<md5>.dir`, as in data.dvc), hashed afresh from the bytes: DVC's
    state cache trusts file timestamps, which a changed file can keep."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import get_odb
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    _, _, tree = build(get_odb(fs, str(folder)), str(folder), fs, "md5", dry_run=True)
    return tree.hash_info.value


def _materialise(version: str, target: Path) -> None:
    """Check version out of the project's DVC cache into target, pulling it from the remote
    first when the cache lacks it."""
    from dvc.logger import set_loggers_level
    from dvc.repo import Repo
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    wanted = HashInfo("md5", version)
    root = paths().data_dir.parent
    with set_loggers_level(logging.WARNING):
        _ensure_repo(root)  # a fresh store (a step pod) reads from the remote alone
        _ensure_remote(root)
    with set_loggers_level(logging.WARNING), Repo(str(root)) as repo:
        cache = repo.cache.local
        try:
            checkout(str(target), cache.fs, Tree.load(cache, wanted), cache)
        except Exception:  # noqa: BLE001 - not (all) in the cache: any DVC error means "pull"
            shutil.rmtree(target, ignore_errors=True)
            repo.cloud.pull([wanted])  # the folder's listing first, then the files it lists
            tree = Tree.load(cache, wanted)
            repo.cloud.pull([oid for _, _, oid in tree])
            checkout(str(target), cache.fs, tree, cache)


def checkout_version(version: str) -> Path:
    """The folder holding exactly data version `version` (hash checked), materialised from DVC
    when it is missing or no longer matches; DataVersionMismatch when DVC cannot bring it back."""
    folder = paths().home / "datasets" / version.removesuffix(".dir")
    if folder.is_dir() and dataset_hash(folder) == version:
        return folder
    found = dataset_hash(folder) if folder.is_dir() else "nothing"
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        try:
            _materialise(version, work / "data")
        except Exception as exc:  # noqa: BLE001 - every way DVC can fail ends in the one refusal
            raise DataVersionMismatch(
                f"data version {version} cannot be read: {folder} holds {found}, and neither the"
                f" DVC cache nor the remote has it ({type(exc).__name__}: {exc})"
            ) from exc
        if (restored := dataset_hash(work / "data")) != version:
            raise DataVersionMismatch(f"DVC restored {restored} for data version {version}")
        if folder.is_dir():
            folder.rename(work / "changed")
        (work / "data").rename(folder)
        if found != "nothing":
            log.warning("data version %s: %s held %s; restored from DVC", version, folder, found)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
