"""The prediction log of a real `bentoml serve` of the production Bento: what is logged, what is
not, that a SIGTERM and a restart on the same log folder neither lose nor duplicate a row, and that
a flood stays under the day's cap with the rest counted in /metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.conftest import ROOT, free_port, wait_http
from visionzero.serving.prediction_log import COLUMNS, read_predictions

pytestmark = pytest.mark.slow
POINT = {"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}
DAY_CAP = 4 * 1024 * 1024  # the served stage's VZ_PREDICTION_LOG_MAX_DAY_BYTES: a few big requests


class LoggedServe:
    """`bentoml serve <production Bento>` logging to one folder; stopped and started again by
    the restart test."""

    def __init__(self, bento_tag: str, log_dir: Path) -> None:
        self.bento_tag = bento_tag
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "VZ_STAGE": "production",
            "VZ_PREDICTION_LOG": str(self.log_dir),
            "VZ_PREDICTION_LOG_MAX_DAY_BYTES": str(DAY_CAP),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", self.bento_tag]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/readyz", process=self.process)

    def stop(self) -> None:
        """SIGTERM, as `serve`, Kubernetes and Ctrl-C end it; the workers flush on the way out."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise

    def predict(self, items: list[dict], request_id: str | None = None) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return requests.post(
            self.url + "/predict", json={"items": items}, headers=headers, timeout=60
        )


@pytest.fixture(scope="module")
def logged(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedServe]:
    server = LoggedServe(trained.production.bento_tag, tmp_path_factory.mktemp("predlog"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def raw_rows(root: Path) -> list[dict]:
    """Every line of every file, not de-duplicated as read_predictions does."""
    return [json.loads(line) for path in root.rglob("*.jsonl") for line in path.open()]


def rows_of(root: Path, request_ids: set[str], expected: int, timeout: float = 15.0) -> list:
    """The raw rows of these requests once `expected` of them are written (the writer flushes
    every second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [row for row in raw_rows(root) if row["request_id"] in request_ids]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_each_item_of_an_answer_is_a_row(logged: LoggedServe, trained: dict) -> None:
    items = [
        POINT,
        {**POINT, "resolution": 7, "datetime": "2025-02-04T21:15"},
        {**POINT, "resolution": 8, "datetime": "2025-02-05T02:00"},
    ]
    response = logged.predict(items, request_id="multi-1")
    assert response.status_code == 200
    answered = response.json()["predictions"]
    rows = rows_of(logged.log_dir, {"multi-1"}, 3)
    assert [list(row) for row in rows] == [COLUMNS] * 3
    assert [row["item"] for row in rows] == [0, 1, 2]
    version = trained.production.model_version
    for row, p in zip(rows, answered, strict=True):
        assert row["stage"] == "production" and row["model_version"] == version
        assert (row["zone"], row["resolution"], row["date"]) == (
            p["zone"],
            p["resolution"],
            p["date"],
        )
        assert row["block"] == p["block"][0] // 4 and row["expected"] == p["expected_crashes"]
        assert row["level"] == p["risk_level"]
    frame = read_predictions(logged.log_dir, stages=["production"])
    mine = frame[frame["request_id"] == "multi-1"]
    assert mine["resolution"].tolist() == [9, 7, 8] and mine["block"].tolist() == [2, 5, 0]
    age = pd.Timestamp.now(tz="UTC") - mine["time"]
    assert ((age >= pd.Timedelta(0)) & (age < pd.Timedelta(minutes=2))).all()


def test_a_request_without_an_id_gets_one_and_refusals_are_not_logged(
    logged: LoggedServe,
) -> None:
    refused = logged.predict([{**POINT, "latitude": 10.0}], request_id="refused-1")
    assert refused.status_code == 400 and refused.json()["field"] == "items[0].latitude"
    assert logged.predict([{**POINT, "datetime": "2025-03-17T13:45"}]).status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        fresh = [row for row in raw_rows(logged.log_dir) if row["date"] == "2025-03-17"]
        if fresh:
            break
        time.sleep(0.2)
    (row,) = fresh
    assert len(row["request_id"]) == 32 and int(row["request_id"], 16) >= 0  # a uuid4
    assert all(row["request_id"] != "refused-1" for row in raw_rows(logged.log_dir))
    text = "".join(path.read_text() for path in logged.log_dir.rglob("*.jsonl"))
    assert "127.0.0.1" not in text  # no client address


def test_a_restart_neither_loses_nor_duplicates_rows(logged: LoggedServe) -> None:
    before = {path: path.stat().st_size for path in logged.log_dir.rglob("*.jsonl")}
    first = [f"restart-a-{i}" for i in range(20)]
    for request_id in first:
        assert logged.predict([POINT, POINT], request_id=request_id).status_code == 200
    logged.stop()  # at once: the last rows are still in the buffer, the shutdown hook writes them
    rows = [row for row in raw_rows(logged.log_dir) if row["request_id"] in set(first)]
    assert len(rows) == 40, "SIGTERM lost buffered rows"
    written = {path: path.stat().st_size for path in logged.log_dir.rglob("*.jsonl")}

    logged.start()
    second = [f"restart-b-{i}" for i in range(15)]
    for request_id in second:
        assert logged.predict([POINT, POINT], request_id=request_id).status_code == 200
    logged.stop()
    logged.start()  # the module fixture stops it

    assert all(before[path] <= size for path, size in written.items() if path in before)
    after = {path: path.stat().st_size for path in logged.log_dir.rglob("*.jsonl")}
    assert {path: after[path] for path in written} == written, (
        "a new process appended to an old file"
    )
    assert len(after) > len(written)
    ours = set(first) | set(second)
    rows = [row for row in raw_rows(logged.log_dir) if row["request_id"] in ours]
    keys = Counter((row["request_id"], row["item"]) for row in rows)
    assert {request_id for request_id, _ in keys} == ours  # K + M ids, nothing lost
    assert len(keys) == 2 * len(ours) and set(keys.values()) == {1}  # no duplicate
    frame = read_predictions(logged.log_dir)
    assert len(frame[frame["request_id"].isin(ours)]) == 70


def day_cap_dropped(url: str) -> float:
    """crash_risk_prediction_log_dropped{reason="day_cap"} of all workers, from /metrics."""
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(None, 1)[1])
        for line in text.splitlines()
        if line.startswith("crash_risk_prediction_log_dropped")
        and 'reason="day_cap"' in line
        and 'stage="production"' in line
    )


def test_a_flood_of_big_requests_stays_under_the_day_cap(logged: LoggedServe) -> None:
    """Runs last in this module: it uses the day's bytes up. Both workers write; the day folder
    stays under the cap and every row not written is counted as dropped."""
    big = [{**POINT, "datetime": f"2025-02-{day:02d}T08:30"} for day in range(1, 11)] * 1000
    ids = {f"flood-{i}" for i in range(6)}
    with ThreadPoolExecutor(2) as pool:  # two at once: both workers answer and log
        codes = list(pool.map(lambda rid: logged.predict(big, request_id=rid).status_code, ids))
    assert codes == [200] * len(ids)
    sent = len(big) * len(ids)
    day = logged.log_dir / "production" / pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")

    def flood_rows() -> int:
        return sum(1 for row in raw_rows(logged.log_dir) if row["request_id"] in ids)

    deadline = time.monotonic() + 60
    while flood_rows() + day_cap_dropped(logged.url) < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    written = sum(path.stat().st_size for path in day.glob("*.jsonl"))
    assert written <= DAY_CAP and written > DAY_CAP - 1024  # filled to the last whole row
    assert flood_rows() + day_cap_dropped(logged.url) == sent
    assert 0 < flood_rows() < sent
