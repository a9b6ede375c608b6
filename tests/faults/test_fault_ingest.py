"""Safe ingest, against real HTTP servers on 127.0.0.1 (the recorded SODA format, a fake NOAA):

8. an empty or implausible API answer completes no day: it is flagged, counted and alerted;
9. malformed weather is quarantined, a failed run commits nothing, the cursor is the newest
   validated date;
10. a run reads exactly the data version it recorded, or refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, LocalServer
from tests.fake_socrata import make_handler, synthetic_records
from visionzero.data.dataset import LoadConfig, build_dataset, load_frames

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SNAPSHOT_DAYS = 632
APRIL_2025 = [date(2025, 4, 1) + timedelta(days=i) for i in range(30)]
NOW = datetime(2025, 6, 15, tzinfo=UTC)  # settled (30 days) through 2025-05-16
CFG = LoadConfig(max_attempts=2, backoff_seconds=0.01)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every store of this test in its own folder: data/ sits in a project folder of its own."""
    monkeypatch.setenv("VZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VZ_DATA_DIR", str(tmp_path / "project" / "data"))
    return tmp_path / "project" / "data"


def noaa_handler(
    body: list, arrived: threading.Event | None = None, release: threading.Event | None = None
) -> type[BaseHTTPRequestHandler]:
    """NOAA's access-data service answering `body`; with events, it holds the request until
    `release` (a step still waiting for its weather)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if arrived is not None and release is not None:
                arrived.set()
                release.wait(timeout=120)
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def socrata_april(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """A Socrata server with 220 crashes on every day of April 2025 and an empty NOAA; yields
    the queries it saw."""
    seen: list[dict] = []
    records = synthetic_records(dict.fromkeys(APRIL_2025, 220))
    with (
        LocalServer(make_handler(records, [], seen)) as socrata,
        LocalServer(noaa_handler([])) as noaa,
    ):
        monkeypatch.setenv("SOCRATA_URL", socrata.url)
        monkeypatch.setenv("NOAA_URL", noaa.url)
        yield seen


def api_complete_days(data_dir: Path) -> list[date]:
    complete = load_frames(data_dir)[1]
    return sorted(complete.loc[complete["source"] == "api", "date"].dt.date)


# --- 8. an empty answer poisoned the data ------------------------------------------------------


def test_empty_answer_completes_no_day_and_is_alerted(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steps.data.data_loader import load_dataset
    from visionzero.platform.settings import paths
    from visionzero.status import data_status, format_status

    with LocalServer(make_handler([], [], [])) as socrata:  # 200 `[]` on every page
        monkeypatch.setenv("SOCRATA_URL", socrata.url)
        monkeypatch.setenv("NOAA_URL", socrata.url + "/noaa")
        ref = load_dataset(CFG)
    settled = datetime.now(UTC).date() - timedelta(days=CFG.settle_days)
    empty_days = (settled - date(2025, 4, 1)).days + 1
    assert ref.complete_days == SNAPSHOT_DAYS, "days without a single crash became complete"
    assert api_complete_days(Path(ref.data_dir)) == []
    assert ref.day_flags == {"empty": empty_days}
    alert = json.loads(paths().outbox.read_text().splitlines()[-1])
    assert alert["kind"] == "data" and f"{empty_days} API days" in alert["title"]
    assert alert["reasons"][0].startswith("2025-04-01 empty: 0 crashes")
    assert data_status()["day_flags"] == {"empty": empty_days}
    assert f"empty {empty_days}" in format_status({"data": data_status()})

    again = load_dataset(LoadConfig(offline=True))  # a later offline run does not trust them either
    assert again.complete_days == SNAPSHOT_DAYS and again.day_flags == {"empty": empty_days}


def test_only_plausible_days_become_complete(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = {day: 220 for day in APRIL_2025}
    counts[date(2025, 4, 5)] = 3  # a Saturday with 3 crashes: a partial answer
    counts[date(2025, 4, 6)] = 0  # a Sunday with none
    with LocalServer(make_handler(synthetic_records(counts), [], [])) as socrata:
        monkeypatch.setenv("SOCRATA_URL", socrata.url)
        monkeypatch.setenv("NOAA_URL", socrata.url + "/noaa")
        summary = build_dataset(data_dir, CFG, now=datetime(2025, 5, 11, tzinfo=UTC))
    # settled through 2025-04-11: the 9 days with a plausible count are complete, 2 are flagged
    expected = [d for d in APRIL_2025[:11] if d not in (date(2025, 4, 5), date(2025, 4, 6))]
    assert api_complete_days(data_dir) == expected
    assert summary.complete_days == SNAPSHOT_DAYS + 9
    assert summary.day_flags == {"empty": 1, "implausible": 1}
    flagged = pd.read_csv(data_dir / "flagged_days.csv")
    low = flagged.set_index("date").loc["2025-04-05"]
    assert low["reason"] == "implausible" and low["crashes"] == 3
    assert 0 < low["expected_low"] < 220 < low["expected_high"]


def test_days_an_earlier_run_wrongly_completed_are_judged_again(data_dir: Path) -> None:
    build_dataset(data_dir, LoadConfig(offline=True))
    complete = pd.read_csv(data_dir / "complete_days.csv")
    poisoned = pd.DataFrame(  # what the old rule wrote after a 200 `[]`
        {
            "date": pd.date_range("2025-04-01", "2026-10-25").strftime("%Y-%m-%d"),
            "window": "API",
            "confidence": "high",
            "source": "api",
        }
    )
    pd.concat([complete, poisoned]).to_csv(data_dir / "complete_days.csv", index=False)
    summary = build_dataset(data_dir, LoadConfig(offline=True))
    assert summary.complete_days == SNAPSHOT_DAYS
    assert summary.day_flags == {"empty": 573}


# --- 9. a failed run moved the cursor ----------------------------------------------------------


NO_DATE = {"STATION": "USW00094728", "PRCP": "0.10", "TMAX": "61"}
GOOD_DAY = {"DATE": "2024-04-01", "PRCP": "0.20", "TMAX": "60", "TMIN": "45"}


@pytest.mark.parametrize(
    ("weather", "quarantined"),
    [
        pytest.param([NO_DATE, NO_DATE], {"weather_date": 2}, id="no-record-has-a-date"),
        pytest.param(
            [
                NO_DATE,
                GOOD_DAY,
                {"DATE": "2024-04-02", "PRCP": "lots", "TMAX": "58"},  # not a number
                {"DATE": "04/03/2024x", "PRCP": "0.00"},  # not a date
                "not an object",
            ],
            {"weather_date": 2, "weather_values": 1, "malformed_record": 1},
            id="some-records-are-broken",
        ),
    ],
)
def test_malformed_weather_is_quarantined(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, weather: list, quarantined: dict
) -> None:
    records = synthetic_records(dict.fromkeys(APRIL_2025, 220))
    with (
        LocalServer(make_handler(records, [], [])) as socrata,
        LocalServer(noaa_handler(weather)) as noaa,
    ):
        monkeypatch.setenv("SOCRATA_URL", socrata.url)
        monkeypatch.setenv("NOAA_URL", noaa.url)
        summary = build_dataset(data_dir, CFG, now=NOW)
    assert summary.quarantined == quarantined
    kept = load_frames(data_dir)[2].set_index("date")
    assert kept.index.is_unique and kept.index.notna().all()
    assert (GOOD_DAY in weather) == ("2024-04-01" in kept.index.strftime("%Y-%m-%d"))
    assert "2024-04-02" not in kept.index.strftime("%Y-%m-%d")
    quarantine = pd.read_parquet(data_dir / "quarantine.parquet")
    noaa_rows = quarantine[quarantine["source"] == "noaa"]
    assert len(noaa_rows) == sum(quarantined.values())
    assert noaa_rows["LOCATION"].str.contains("USW00094728").any()  # the record, kept to read
    assert api_complete_days(data_dir) == APRIL_2025  # the crashes were loaded all the same


def test_a_killed_run_commits_nothing_and_the_next_run_starts_where_it_did(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, socrata_april: list[dict]
) -> None:
    arrived, release = threading.Event(), threading.Event()
    script = (
        "from datetime import UTC, datetime\n"
        "from pathlib import Path\n"
        "from visionzero.data.dataset import LoadConfig, build_dataset\n"
        f"build_dataset(Path({str(data_dir)!r}), LoadConfig(backoff_seconds=0.01),"
        " now=datetime(2025, 6, 15, tzinfo=UTC))\n"
    )
    with LocalServer(noaa_handler([], arrived, release)) as hanging_noaa:
        env = {**os.environ, "NOAA_URL": hanging_noaa.url}
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:  # the crashes are fetched; the step dies while it waits for the weather
            assert arrived.wait(timeout=180), "the loader never asked NOAA"
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            release.set()
    assert not (data_dir / "api_rows").exists(), "a killed run committed its API rows"
    assert [q["$where"] for q in socrata_april] == ["crash_date >= '2025-04-01T00:00:00.000'"]

    summary = build_dataset(data_dir, CFG, now=NOW)
    assert socrata_april[-1]["$where"] == "crash_date >= '2025-04-01T00:00:00.000'"
    assert api_complete_days(data_dir) == APRIL_2025
    assert summary.day_flags == {"empty": 16}  # 2025-05-01 .. 05-16: settled, no crash received


def test_the_cursor_is_the_newest_validated_date(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []
    records = synthetic_records(dict.fromkeys(APRIL_2025[:10], 220))
    junk = {"crash_date": "2025-05-20T00:00:00.000", "crash_time": "9:00"}  # no collision_id
    with LocalServer(make_handler([*records, junk], [], seen)) as socrata:
        monkeypatch.setenv("SOCRATA_URL", socrata.url)
        monkeypatch.setenv("NOAA_URL", socrata.url + "/noaa")
        first = build_dataset(data_dir, CFG, now=NOW)
        build_dataset(data_dir, CFG, now=NOW)
    assert first.quarantined == {"collision_id": 1}
    # the quarantined row of 2025-05-20 does not move the cursor: the newest valid day is 04-10
    assert seen[-1]["$where"] == "crash_date >= '2025-04-10T00:00:00.000'"


# --- 10. the dataset artifact points at a folder the next run overwrites ------------------------


def model_config():  # noqa: ANN201 - ModelConfig, imported late like the steps do
    from pipelines.training import load_training_config

    return load_training_config(ROOT / "configs" / "training.yaml").model


def test_a_run_reads_the_data_version_it_recorded(
    data_dir: Path, socrata_april: list[dict]
) -> None:
    from steps.data.data_loader import load_dataset
    from visionzero.model.training_data import load_split

    first = load_dataset(LoadConfig(offline=True))
    committed = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    assert first.version == committed  # a fresh offline run: the same data, the same hash
    second = load_dataset(CFG)  # online: April 2025 arrives and data/ is rewritten
    assert second.version != first.version

    prepared, _, _ = load_split(first, model_config())
    assert prepared.days["date"].max() < pd.Timestamp("2025-04-01"), "read the newer data"
    assert prepared.crashes["source"].eq("snapshot").all()
    prepared, _, _ = load_split(second, model_config())
    assert prepared.days["date"].max() == pd.Timestamp("2025-04-30")


def test_data_that_no_longer_matches_is_restored_or_refused(data_dir: Path) -> None:
    from steps.data.data_loader import load_dataset
    from visionzero.model.training_data import load_split
    from visionzero.platform.settings import paths

    ref = load_dataset(LoadConfig(offline=True))
    crashes = sorted((Path(ref.data_dir) / "crashes").glob("*.parquet"))[-1]  # one month
    original = crashes.read_bytes()
    crashes.write_bytes(original[:-100])  # someone changed the run's data
    load_split(ref, model_config())  # restored from the DVC cache, then read
    assert crashes.read_bytes() == original

    crashes.write_bytes(original[:-100])
    shutil.rmtree(data_dir.parent / ".dvc" / "cache")
    shutil.rmtree(paths().dvc_remote)
    from visionzero.data.versioning import DataVersionMismatch

    with pytest.raises(DataVersionMismatch, match=ref.version):
        load_split(ref, model_config())
