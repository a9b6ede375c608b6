"""Runs: a closing summary reads the run it belongs to (by id), never "the newest run"; a copied
or moved project uses its own stores, never the original's.

The slow tests share one project folder (VZ_HOME and the data inside it, as in a fresh clone)
trained by two `python run.py --offline` started at once; then it is copied, then moved."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, FreshProject


def project_env(project: Path) -> dict[str, str]:
    """This process's environment with every store in `project/.vz`, as a fresh clone has them:
    ZENML_CONFIG_PATH and BENTOML_HOME (set for the test session) dropped, so the child derives
    them from VZ_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZENML_CONFIG_PATH", "BENTOML_HOME")}
    env.update(VZ_HOME=str(project / ".vz"), VZ_DATA_DIR=str(project / "data"))
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def store_runs(env: dict[str, str]) -> dict[str, dict]:
    """The training runs of the store `env` names, by run name: status and model version (read
    in a child: this process's ZenML client is bound to the session's store)."""
    script = (
        "import json; from visionzero.platform.settings import configure_environment;"
        "configure_environment(); from zenml.client import Client;"
        "runs = Client().list_pipeline_runs(pipeline_name='training_pipeline', size=100).items;"
        "print(json.dumps({r.name: {'status': str(r.status),"
        " 'version': r.model_version.number if r.model_version else None} for r in runs}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its sha256 and mtime."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def values_holding(database: Path, needle: str) -> list[str]:
    """`table.column` of every text value in the SQLite file that holds `needle`."""
    found = []
    with closing(sqlite3.connect(database)) as connection:
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                hits = connection.execute(
                    f'SELECT count(*) FROM "{table}" WHERE instr(CAST("{row[1]}" AS TEXT), ?)',
                    (needle,),
                ).fetchone()[0]
                if hits:
                    found.append(f"{table}.{row[1]}")
    return found


@dataclass
class Raced:
    project: Path
    env: dict[str, str]
    children: list[subprocess.Popen]
    outputs: list[str]


@pytest.fixture(scope="module")
def raced(fresh_project: FreshProject) -> Raced:
    """Two first runs started at once in a fresh project folder (a fresh clone, conftest)."""
    project = fresh_project.clone
    return Raced(project, project_env(project), fresh_project.children, fresh_project.outputs)


@pytest.mark.slow
def test_two_first_runs_at_once_each_close_with_their_own_run(raced: Raced) -> None:
    """Each prints the decision of its own run. Reading "the newest run" instead, the run
    created first reads the other one (still running: KeyError 'deployer'; finished: the
    other's model version)."""
    for child, output in zip(raced.children, raced.outputs, strict=True):
        assert child.returncode == 0, output[-3000:]
    runs = store_runs(raced.env)
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs.values()), runs
    printed = []
    for output in raced.outputs:
        name = re.search(r"^Run (training_pipeline-\S+)$", output, re.MULTILINE)
        decision = re.search(r"^Decision for model version (\d+):", output, re.MULTILINE)
        assert name and decision, output[-3000:]
        assert int(decision.group(1)) == runs[name.group(1)]["version"], (name, runs)
        printed.append(name.group(1))
    assert sorted(printed) == sorted(runs)


@pytest.mark.slow
def test_a_copied_project_uses_its_own_stores(raced: Raced, tmp_path: Path) -> None:
    """`cp -a` of a trained project: the copy says it re-pointed, reads its own registry and
    artifacts (`report` loads one), and the original's files stay as they were."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(raced.project), str(copy)], check=True)
    before = fingerprint(raced.project)
    env = project_env(copy)
    status = run_cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    assert (
        f"this project moved from {raced.project}: its stores now point at {copy / '.vz/zenml'}"
        in status.stderr
    )
    production = json.loads(status.stdout)["models"]["production"]
    assert production["stage"] == "production", production
    report = run_cli(env, "report")  # loads the evaluation report from the artifact store
    assert report.returncode == 0, report.stderr[-3000:]
    # `report` shows the newest version; which of the two raced runs deployed last (and so
    # serves) is up to the race: the report is one of the raced runs' versions.
    reported = re.match(r"model version (\d+), data ", report.stdout)
    versions = {run["version"] for run in store_runs(env).values()}
    assert reported and int(reported.group(1)) in versions, (report.stdout[:200], versions)
    assert "moved" not in report.stderr  # re-pointed once, not at every command
    assert fingerprint(raced.project) == before
    stores = copy / ".vz/zenml"
    assert str(raced.project) not in (stores / "config.yaml").read_text()
    for database in [stores.joinpath("local_stores/default_zen_store/zenml.db")] + list(
        stores.glob("local_stores/*/mlflow.db")
    ):
        assert values_holding(database, f"{raced.project}/") == [], database


@pytest.mark.slow
def test_a_moved_project_uses_its_own_stores(raced: Raced, tmp_path: Path) -> None:
    """`mv` of a trained project (last: the others use it where it was): `status --json` is
    JSON, names the trained production model, and nothing is made where the project was. It is
    moved back afterwards: the session's other tests may use it (they see one more move)."""
    moved = tmp_path / "moved"
    raced.project.rename(moved)
    try:
        status = run_cli(project_env(moved), "status", "--json")
        assert status.returncode == 0, status.stderr[-3000:]
        assert f"this project moved from {raced.project}" in status.stderr
        production = json.loads(status.stdout)["models"]["production"]
        assert production["stage"] == "production", production
        assert not raced.project.exists()
    finally:
        moved.rename(raced.project)


def make_store(config_dir: Path, old_config_dir: Path) -> Path:
    """A ZenML configuration folder as ZenML leaves it, made in `old_config_dir` (its absolute
    paths) and held in `config_dir`: config.yaml, the SQLite store, an MLflow database."""
    database = config_dir / "local_stores/default_zen_store/zenml.db"
    database.parent.mkdir(parents=True)
    old_database = old_config_dir / "local_stores/default_zen_store/zenml.db"
    store = {"type": "sql", "url": f"sqlite:///{old_database}", "database": str(old_database)}
    (config_dir / "config.yaml").write_text(yaml.safe_dump({"store": store, "version": "0.98.0"}))
    artifact = f"{old_config_dir}/local_stores/abc/trainer/model/1"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE artifact_version (uri TEXT, size INTEGER)")
        connection.execute("INSERT INTO artifact_version VALUES (?, 1)", (artifact,))
    mlflow = config_dir / "local_stores/abc/mlflow.db"
    mlflow.parent.mkdir()
    with closing(sqlite3.connect(mlflow)) as connection, connection:
        connection.execute("CREATE TABLE runs (artifact_uri VARCHAR(200))")
        connection.execute("INSERT INTO runs VALUES (?)", (f"{old_config_dir}/local_stores/abc",))
    return database


def point_at(monkeypatch: pytest.MonkeyPatch, project: Path) -> Path:
    config_dir = project / ".vz" / "zenml"
    monkeypatch.setenv("VZ_HOME", str(project / ".vz"))
    monkeypatch.setenv("ZENML_CONFIG_PATH", str(config_dir))
    return config_dir


def test_repointing_rewrites_the_copy_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy's own config and databases name the copy afterwards; run again (or a second
    command after the first), nothing changes, even when the new folder's path holds the old."""
    from visionzero.platform.moved_project import moved_stores, repoint_moved_stores

    old = tmp_path / "p" / ".vz" / "zenml"
    new = point_at(monkeypatch, tmp_path / "p" / "q")  # its paths hold the old folder's
    database = make_store(new, old)
    assert repoint_moved_stores() == (
        f"this project moved from {tmp_path / 'p'}: its stores now point at {new}"
    )
    assert moved_stores() is None and repoint_moved_stores() is None
    store = yaml.safe_load((new / "config.yaml").read_text())["store"]
    assert store["url"] == f"sqlite:///{database}" and store["database"] == str(database)
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("SELECT uri, size FROM artifact_version").fetchall() == [
            (f"{new}/local_stores/abc/trainer/model/1", 1)
        ]
    with closing(sqlite3.connect(new / "local_stores/abc/mlflow.db")) as connection:
        assert connection.execute("SELECT artifact_uri FROM runs").fetchone() == (
            f"{new}/local_stores/abc",
        )


def test_a_store_in_place_or_elsewhere_on_purpose_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionzero.platform.moved_project import moved_stores

    config_dir = point_at(monkeypatch, tmp_path / "p")
    make_store(config_dir, config_dir)  # made here
    assert moved_stores() is None
    elsewhere = {"type": "sql", "url": f"sqlite:///{tmp_path / 'shared.db'}"}
    (config_dir / "config.yaml").write_text(yaml.safe_dump({"store": elsewhere}))
    assert moved_stores() is None
    monkeypatch.setenv("ZENML_STORE_URL", "http://127.0.0.1:8237")
    assert moved_stores() is None


def test_a_configuration_without_its_store_gets_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only config.yaml came along: nothing to re-point, so it is set aside (ZenML then makes a
    fresh store here) instead of opening the original's."""
    from visionzero.platform.moved_project import MOVED_CONFIG, repoint_moved_stores

    config_dir = point_at(monkeypatch, tmp_path / "copy")
    make_store(tmp_path / "scratch", tmp_path / "original" / ".vz" / "zenml")
    config_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "scratch" / "config.yaml", config_dir / "config.yaml")
    message = repoint_moved_stores()
    assert message and "a fresh store is made in" in message
    assert not (config_dir / "config.yaml").exists() and (config_dir / MOVED_CONFIG).exists()
