"""A copied (`cp -a`) or moved (`mv`) project: its local stores re-pointed at its own folder
before anything opens them (ZenML and MLflow keep absolute paths), under the initialisation lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionzero.platform.settings import paths, settings
from visionzero.platform.stack import initialisation_lock

# Where ZenML keeps its local SQLite store, under its configuration folder (ZENML_CONFIG_PATH).
ZENML_DATABASE = ("local_stores", "default_zen_store", "zenml.db")
MOVED_CONFIG = "config.yaml.moved"  # a configuration naming a store this folder does not hold


@dataclass(frozen=True)
class MovedStores:
    """The local ZenML store this project's configuration names was made in another folder: the
    project was copied (`cp -a`) or moved (`mv`). `old` is the ZenML configuration folder the
    stores were made in, `new` this project's."""

    old: Path
    new: Path

    def folders(self) -> tuple[Path, Path]:
        """The folder that was copied or moved, and where to: `old` and `new` without the tail
        they share (`.vz/zenml`). Paths under it (MLflow's default experiment, in the folder
        `run.py` ran in) move with it, not only the ZenML folder's."""
        shared = 0
        while (
            shared < min(len(self.old.parts), len(self.new.parts)) - 1
            and self.old.parts[-1 - shared] == self.new.parts[-1 - shared]
        ):
            shared += 1
        return (
            Path(*self.old.parts[: len(self.old.parts) - shared]),
            Path(*self.new.parts[: len(self.new.parts) - shared]),
        )


def zenml_config_dir() -> Path:
    return settings().zenml_config_path or paths().zenml


def moved_stores() -> MovedStores | None:
    """The local store's SQLite file, as `config.yaml` names it, is not this configuration
    folder's own: ZenML writes absolute paths (the store URL, artifact and log URIs, MLflow's
    artifact locations), so a copied or moved project would read and write the original's.
    None for a ZenML server, or a SQLite file the user placed outside the usual layout."""
    import yaml

    if settings().zenml_store_url:
        return None
    new = zenml_config_dir()
    config = new / "config.yaml"
    if not config.exists():
        return None
    store = (yaml.safe_load(config.read_text()) or {}).get("store") or {}
    url = str(store.get("url") or "")
    if store.get("type") != "sql" or not url.startswith("sqlite:///"):
        return None
    database, own = Path(url.removeprefix("sqlite:///")), new.joinpath(*ZENML_DATABASE)
    if database.parts[-3:] != ZENML_DATABASE or database == own:
        return None
    if database.exists() and own.exists() and database.samefile(own):  # a symlinked path
        return None
    return MovedStores(old=database.parents[2], new=new)


def repoint_moved_stores() -> str | None:
    """Before anything opens the store: if the project was copied or moved, point its stores at
    its own folder (the one line to print says so), else None. Re-pointing rewrites the copy's
    own files only (never the original's): the old folder prefix becomes the new one in the
    ZenML database and the MLflow databases beside the artifacts, then in `config.yaml`, the
    file that marks it done. A configuration naming a store this folder does not hold is set
    aside instead, and ZenML makes a fresh store here."""
    if moved_stores() is None:  # the usual case: no lock, no ZenML
        return None
    with initialisation_lock():
        moved = moved_stores()  # another command may have re-pointed it meanwhile
        if moved is None:
            return None
        config = moved.new / "config.yaml"
        database = moved.new.joinpath(*ZENML_DATABASE)
        old, new = moved.folders()
        if not database.exists():
            config.replace(config.with_name(MOVED_CONFIG))
            return (
                f"this project's ZenML configuration named the stores of {old}, which this "
                f"folder does not hold: a fresh store is made in {moved.new} (the old "
                f"configuration is kept as {MOVED_CONFIG})"
            )
        for store in (database, *sorted(moved.new.glob("local_stores/*/mlflow.db"))):
            _replace_in_database(store, f"{old}/", f"{new}/")
        _replace_in_config(config, f"{old}/", f"{new}/")
    return f"this project moved from {old}: its stores now point at {moved.new}"


def _replace_in_database(database: Path, old: str, new: str) -> None:
    """Every text value holding `old` gets `new` instead, in one transaction. A value already
    holding `new` is skipped, so running it again (after a crash before `config.yaml` was
    rewritten) changes nothing even when `new` contains `old`."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(database)) as connection, connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (table,) in tables.fetchall():
            columns = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
            for column in (row[1] for row in columns):
                connection.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0 '
                    f'AND instr("{column}", ?) = 0',
                    (old, new, old, new),
                )


def _replace_in_config(config: Path, old: str, new: str) -> None:
    """The store section's paths (URL, database, backup folder) re-pointed, the file replaced
    atomically: a half-written configuration would lose the store."""
    import os
    import tempfile

    import yaml

    content = yaml.safe_load(config.read_text())
    content["store"] = {
        key: value.replace(old, new) if isinstance(value, str) else value
        for key, value in content["store"].items()
    }
    fd, tmp = tempfile.mkstemp(dir=config.parent, prefix=".config-", suffix=".yaml")
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(content, handle)
    os.chmod(tmp, config.stat().st_mode & 0o777)
    os.replace(tmp, config)
