"""The backfill and the month-partitioned dataset, against a real local server replaying the
bundled real rows in the SODA format (tests/fake_socrata.py); the kill test runs `run.py backfill`
as a real process and kills it with SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, LocalServer, wait_for
from tests.fake_socrata import (
    WHERE,
    make_handler,
    recorded_records,
    snapshot_records,
    synthetic_records,
)
from visionzero.data.backfill import CHECKPOINT, Window, backfill, month_windows
from visionzero.data.completeness import judge_days
from visionzero.data.dataset import (
    LoadConfig,
    build_dataset,
    load_frames,
    read_manifest,
    read_snapshot_raw,
)
from visionzero.data.http import RetryPolicy
from visionzero.data.partitions import API_ROWS, CRASHES, partition_file, read_partitions
from visionzero.data.socrata import SocrataClient, records_to_rows
from visionzero.data.store import ApiInput, in_memory
from visionzero.data.validation import dedupe, validate

FAST = LoadConfig(max_attempts=2, backoff_seconds=0.01)


# --- pure parts (fast tier) ---------------------------------------------------------------------


def test_windows_are_calendar_months_without_gap_or_overlap() -> None:
    windows = month_windows(date(2024, 11, 15), date(2025, 2, 1))
    assert [(w.start, w.end) for w in windows] == [
        (date(2024, 11, 15), date(2024, 12, 1)),
        (date(2024, 12, 1), date(2025, 1, 1)),
        (date(2025, 1, 1), date(2025, 2, 1)),
        (date(2025, 2, 1), date(2025, 3, 1)),
    ]
    assert [w.name for w in windows] == ["2024-11", "2024-12", "2025-01", "2025-02"]
    # a window fetched from the 15th does not cover the whole month
    assert not Window(date(2024, 11, 1), date(2024, 12, 1)).covered_by(
        {"start": "2024-11-15", "end": "2024-12-01"}
    )
    assert Window(date(2024, 11, 20), date(2024, 12, 1)).covered_by(
        {"start": "2024-11-15", "end": "2024-12-01"}
    )


def test_days_before_any_reference_are_judged_against_the_later_ones() -> None:
    """A backfilled history starts before every complete day: its first days are compared with
    the first complete days of their weekday after them, not left `no_reference` for ever."""
    days = pd.date_range("2024-01-01", "2024-04-30")
    reference = pd.Series(200, index=days[days >= "2024-03-01"])  # complete from March only
    counts = pd.Series(210, index=days)
    counts[pd.Timestamp("2024-01-10")] = 3  # a partial answer early in the history
    counts[pd.Timestamp("2024-01-11")] = 0  # and an empty one
    complete, flagged = judge_days(days, counts, reference, 8, (0.4, 1.75))
    before_march = days[days < "2024-03-01"]
    assert set(complete) == set(before_march) - {
        pd.Timestamp("2024-01-10"),
        pd.Timestamp("2024-01-11"),
    }
    assert flagged.set_index("date")["reason"].to_dict() == {
        pd.Timestamp("2024-01-10"): "implausible",
        pd.Timestamp("2024-01-11"): "empty",
    }
    # with no complete day of its weekday on either side there is nothing to compare with
    lone = pd.DatetimeIndex(["2024-01-01"])
    _, alone = judge_days(lone, counts, reference.iloc[:0], 8, (0.4, 1.75))
    assert alone["reason"].tolist() == ["no_reference"]


def test_a_window_is_fetched_with_ordered_paging_and_retry_after_is_honoured() -> None:
    seen: list[dict] = []
    records = recorded_records()  # 5 crashes of 2026-04-02
    handler = make_handler(records, ["429"], seen, retry_after="1")
    policy = RetryPolicy(max_attempts=3, backoff_seconds=0.01)
    with LocalServer(handler) as server:
        client = SocrataClient(page_size=2, max_pages=10, url=server.url, policy=policy)
        result = client.fetch_window(date(2026, 4, 1), date(2026, 5, 1))
    assert result.complete and len(result.rows) == 5 and result.pages == 3
    assert seen[1]["at"] - seen[0]["at"] >= 0.95, "the retry came before Retry-After allowed"
    assert seen[0]["$where"] == (
        "crash_date >= '2026-04-01T00:00:00.000' AND crash_date < '2026-05-01T00:00:00.000'"
    )
    assert [q["$offset"] for q in seen[1:]] == ["0", "2", "4"]
    assert all(q["$order"] == "crash_date,collision_id" for q in seen)


# --- against the fake server (slow tier) --------------------------------------------------------


@pytest.fixture(scope="module")
def replayed() -> list[dict]:
    """Every bundled crash row as the SODA API serves it."""
    return snapshot_records(date(2000, 1, 1), date(2030, 1, 1))


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own VZ_HOME and data folder (in a project folder of its own, for DVC)."""
    monkeypatch.setenv("VZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VZ_DATA_DIR", str(tmp_path / "project" / "data"))
    return tmp_path / "project" / "data"


def snapshot_crashes() -> pd.DataFrame:
    """The bundled snapshot as typed rows, whatever their source."""
    return dedupe(validate(read_snapshot_raw(), "snapshot")[0])[0].drop(columns="source")


def window_of(query: dict) -> str:
    """The month a backfill request asks for (`2024-11`)."""
    return WHERE.match(query["$where"]).group(1)[:7]


@pytest.mark.slow
def test_backfill_from_empty_reaches_the_snapshot_rows(
    stores: Path,
    replayed: list[dict],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The whole history through the API alone (the bundled snapshot held back entirely): the
    same collision ids with the same typed values, each window asked for once, with the token."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SOCRATA_APP_TOKEN", "app-token-not-for-logs")
    seen: list[dict] = []
    lines: list[str] = []
    cfg = LoadConfig(snapshot_until=date(2012, 6, 30))
    with LocalServer(make_handler(replayed, [], seen)) as server:
        monkeypatch.setenv("SOCRATA_URL", server.url)
        started = time.monotonic()
        report = backfill(cfg, now=datetime(2025, 6, 1, tzinfo=UTC), progress=lines.append)
        elapsed = time.monotonic() - started
    print(f"backfill of {len(replayed)} rows in {len(seen)} windows: {elapsed:.1f} s")
    crashes = load_frames(stores)[0]
    pd.testing.assert_frame_equal(crashes.drop(columns="source"), snapshot_crashes())
    assert (crashes["source"] == "api").all() and crashes["collision_id"].is_unique
    assert report.windows == len(report.fetched) == 156 and not report.failed  # 2012-07..2025-06
    assert sorted(window_of(q) for q in seen) == sorted(report.fetched)  # once each, one page
    assert {q["X-App-Token"] for q in seen} == {"app-token-not-for-logs"}
    said = "\n".join(lines + report.lines() + [r.getMessage() for r in caplog.records])
    assert "app-token-not-for-logs" not in said
    ledger = read_manifest(stores)["backfill"]
    assert sum(entry["rows"] for entry in ledger.values()) == len(replayed)
    assert report.version and report.summary.rows == len(replayed)
    assert json.loads((stores.parents[1] / "home" / "backfill" / CHECKPOINT).read_text()) == {}

    again = backfill(cfg, now=datetime(2025, 6, 1, tzinfo=UTC), progress=lines.append)
    assert again.fetched == [] and again.already == 156 and again.version is None


@pytest.mark.slow
def test_fully_fetched_settled_days_become_complete(
    stores: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """220 crashes a day through July 2024, one day with 3 and a record that is no object: the
    settled days become complete (the snapshot's stay), the partial day is flagged, the broken
    record is quarantined, and days not yet settled when fetched are not judged."""
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(213)]  # to 2024-07-31
    counts = dict.fromkeys(days, 220) | {date(2024, 5, 8): 3}
    records = [*synthetic_records(counts), "not an object"]
    with LocalServer(make_handler(records, [], [])) as server:
        monkeypatch.setenv("SOCRATA_URL", server.url)
        report = backfill(FAST, since=date(2024, 1, 1), now=datetime(2024, 8, 15, tzinfo=UTC))
    complete = load_frames(stores)[1]
    api_days = set(complete.loc[complete["source"] == "api", "date"].dt.date)
    snapshot_days = set(complete.loc[complete["source"] == "snapshot", "date"].dt.date)
    settled = {d for d in days if d <= date(2024, 7, 16)}  # 30 days before 2024-08-15
    assert api_days == settled - snapshot_days - {date(2024, 5, 8)}
    assert len(snapshot_days & set(days)) > 0  # the snapshot's complete days of 2024 stay
    assert report.summary.day_flags == {"implausible": 1}
    assert report.summary.quarantined == {"malformed_record": 1}


@pytest.mark.slow
def test_a_malformed_page_leaves_its_window_for_the_next_run(
    stores: Path, replayed: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third window's page is a truncated body on every try: the windows before it are merged
    and kept, the run says what is unfinished, and the next run fetches only what is left."""
    records = [r for r in replayed if r["crash_date"] >= "2024-10-01"]
    cfg = LoadConfig(
        snapshot_until=date(2024, 9, 30),
        max_attempts=2,
        backoff_seconds=0.01,
        backfill_concurrency=1,
    )
    seen: list[dict] = []
    now = datetime(2025, 6, 1, tzinfo=UTC)
    with LocalServer(make_handler(records, ["ok", "ok", "malformed", "malformed"], seen)) as server:
        monkeypatch.setenv("SOCRATA_URL", server.url)
        first = backfill(cfg, since=date(2024, 10, 1), now=now)
        assert first.failed.keys() == {"2024-12"} and "malformed JSON" in first.failed["2024-12"]
        assert first.fetched[:2] == ["2024-10", "2024-11"] and first.unfetched > 0
        assert any("run the backfill again" in line for line in first.lines())
        held = load_frames(stores)[0]
        fetched_first = set(first.fetched)
        api_months = set(held.loc[held["source"] == "api", "crash_date"].dt.strftime("%Y-%m"))
        served = {r["crash_date"][:7] for r in records}  # the snapshot has months without rows
        assert api_months == fetched_first & served
        first_requests = len(seen)

        second = backfill(cfg, since=date(2024, 10, 1), now=now)
    asked_again = {window_of(q) for q in seen[first_requests:]}
    assert asked_again.isdisjoint(fetched_first) and "2024-12" in asked_again
    assert not second.failed and second.already == len(fetched_first)
    crashes = load_frames(stores)[0]
    pd.testing.assert_frame_equal(crashes.drop(columns="source"), snapshot_crashes())


@pytest.mark.slow
def test_a_killed_backfill_resumes_without_loss_or_duplicates(
    tmp_path: Path, replayed: list[dict]
) -> None:
    """`run.py backfill` killed (SIGKILL) while two windows are in flight: the four finished
    windows are in the checkpoint, nothing was merged; the restarted run asks for none of them
    again and ends with every crash once."""
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump({"parameters": {"data": {"snapshot_until": "2024-06-30"}}}))
    records = [r for r in replayed if r["crash_date"] >= "2024-07-01"]
    seen: list[dict] = []
    gate, held = threading.Event(), threading.Event()

    def hold_from_november(query: dict) -> None:
        if window_of(query) >= "2024-11" and not gate.is_set():
            held.set()
            gate.wait(timeout=120)

    env = {
        **os.environ,
        "VZ_HOME": str(tmp_path / "home"),
        "VZ_DATA_DIR": str(tmp_path / "project" / "data"),
    }
    checkpoint = tmp_path / "home" / "backfill" / CHECKPOINT
    command = [
        sys.executable,
        "run.py",
        "--config",
        str(config),
        "backfill",
        "--since",
        "2024-07-01",
    ]
    with LocalServer(make_handler(records, [], seen, on_request=hold_from_november)) as server:
        env["SOCRATA_URL"] = server.url
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(
                lambda: (
                    held.is_set()
                    and checkpoint.exists()
                    and len(json.loads(checkpoint.read_text())) == 4
                ),
                120,
                "four windows checkpointed and two more in flight",
            )
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            gate.set()
        finished = json.loads(checkpoint.read_text())
        assert sorted(finished) == ["2024-07", "2024-08", "2024-09", "2024-10"]
        assert not (tmp_path / "project" / "data").exists(), "nothing is merged before the end"
        for name, entry in finished.items():
            spooled = pd.read_parquet(checkpoint.parent / f"{name}.parquet")
            assert (
                len(spooled)
                == entry["rows"]
                == sum(r["crash_date"].startswith(name) for r in records)
            )
        killed_run = len(seen)

        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 from earlier runs" in done.stdout
    asked_again = [window_of(q) for q in seen[killed_run:]]
    assert not set(asked_again) & set(finished) and "2024-11" in asked_again
    crashes = load_frames(tmp_path / "project" / "data")[0]
    assert crashes["collision_id"].is_unique
    pd.testing.assert_frame_equal(crashes.drop(columns="source"), snapshot_crashes())
    after_cut = crashes["crash_date"] > "2024-06-30"
    assert (crashes.loc[after_cut, "source"] == "api").all()
    assert json.loads(checkpoint.read_text()) == {}  # merged: the spool is empty


# --- storage by month ---------------------------------------------------------------------------


def month_files(data_dir: Path, kind: str) -> dict[str, os.stat_result]:
    return {p.stem: p.stat() for p in sorted((data_dir / kind).glob("*.parquet"))}


@pytest.fixture
def offline_build(stores: Path) -> Iterator[Path]:
    build_dataset(stores, LoadConfig(offline=True))
    yield stores


@pytest.mark.slow
def test_an_update_rewrites_only_the_months_it_touches(offline_build: Path) -> None:
    data_dir = offline_build
    before = month_files(data_dir, CRASHES)
    fetched = records_to_rows(recorded_records())  # 5 crashes of 2026-04-02
    summary = build_dataset(
        data_dir,
        LoadConfig(offline=True),
        merge=[ApiInput("fetch", in_memory(fetched))],
    )
    after = month_files(data_dir, CRASHES)
    assert summary.months_rewritten == 1 and set(after) == set(before) | {"2026-04"}
    unchanged = [key for key in before if after[key].st_ino == before[key].st_ino]
    assert unchanged == list(before), "months without a new row were rewritten"
    assert summary.rows == 351_052 + 5
    assert len(read_partitions(data_dir, API_ROWS)) == 5


@pytest.mark.slow
def test_a_crash_whose_date_moved_month_is_held_once(offline_build: Path) -> None:
    """A crash first fetched on 2024-12-31, then corrected to 2025-01-02: its old month loses it,
    and the snapshot row it corrects is replaced wherever it was."""
    data_dir = offline_build
    snapshot_row = read_snapshot_raw().iloc[[1000]].copy()  # a real row, here as an API copy
    crash_id = int(snapshot_row["COLLISION_ID"].iloc[0])
    first = snapshot_row.assign(**{"CRASH DATE": "12/31/2024"})
    corrected = snapshot_row.assign(**{"CRASH DATE": "01/02/2025", "CRASH TIME": "9:15"})
    build_dataset(data_dir, LoadConfig(offline=True), merge=[ApiInput("a", in_memory(first))])
    build_dataset(data_dir, LoadConfig(offline=True), merge=[ApiInput("b", in_memory(corrected))])
    crashes = load_frames(data_dir)[0]
    held = crashes[crashes["collision_id"] == crash_id]
    assert len(held) == 1 and held["crash_date"].iloc[0] == pd.Timestamp("2025-01-02")
    assert held["source"].iloc[0] == "api" and held["crash_minute"].iloc[0] == 9 * 60 + 15
    raw = read_partitions(data_dir, API_ROWS)
    assert raw["COLLISION_ID"].tolist() == [str(crash_id)]
    assert not partition_file(data_dir, API_ROWS, "2024-12").exists()
    assert len(crashes) == 351_052


@pytest.mark.slow
def test_the_single_file_layout_is_moved_into_months(stores: Path) -> None:
    """A data folder written before partitions: its API rows are kept, its files replaced."""
    stores.mkdir(parents=True)
    records_to_rows(recorded_records()).to_parquet(stores / "api_rows.parquet", index=False)
    pd.DataFrame({"collision_id": [1]}).to_parquet(stores / "crashes.parquet", index=False)
    summary = build_dataset(stores, LoadConfig(offline=True))
    assert summary.rows == 351_052 + 5
    assert not (stores / "api_rows.parquet").exists() and not (stores / "crashes.parquet").exists()
    assert len(read_partitions(stores, API_ROWS, ["2026-04"])) == 5


@pytest.mark.slow
def test_run_backfill_flag_stops_before_training_when_a_window_is_unfinished(
    tmp_path: Path,
) -> None:
    """`run.py --backfill`: an unfinished window ends the command with exit 1 and the way to
    resume, before any training starts."""
    env = {
        **os.environ,
        "VZ_HOME": str(tmp_path / "home"),
        "VZ_DATA_DIR": str(tmp_path / "project" / "data"),
    }
    config = tmp_path / "training.yaml"
    command = [sys.executable, "run.py", "--config", str(config), "--backfill"]
    config.write_text(yaml.safe_dump({"parameters": {"data": {"max_attempts": 1}}}))
    with LocalServer(make_handler([], ["500"] * 10, [])) as server:
        env["SOCRATA_URL"] = server.url
        done = subprocess.run(
            [*command, "--since", "2026-10-15"], cwd=ROOT, env=env, capture_output=True, text=True
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Unfinished: 2026-10: " in done.stdout and "HTTP 500" in done.stdout
    assert "the backfill is unfinished: run it again to resume" in done.stderr
    assert "Pipeline" not in done.stdout + done.stderr and "Decision" not in done.stdout
