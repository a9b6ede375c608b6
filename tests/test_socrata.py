"""The Socrata client and loader against a real local server speaking the recorded SODA format."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import LocalServer
from tests.fake_socrata import make_handler, recorded_records
from visionzero.data.dataset import LoadConfig, build_dataset, load_frames
from visionzero.data.http import RetryPolicy, SourceUnavailable
from visionzero.data.partitions import API_ROWS, read_partitions
from visionzero.data.socrata import SocrataClient

FAST = RetryPolicy(max_attempts=3, backoff_seconds=0.01, read_timeout=0.5, connect_timeout=0.5)


def client(url: str, page_size: int = 2) -> SocrataClient:
    return SocrataClient(page_size=page_size, max_pages=20, url=url, policy=FAST)


def test_pages_in_order_and_maps_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCRATA_APP_TOKEN", "token-from-env")
    seen: list[dict] = []
    with LocalServer(make_handler(recorded_records(), [], seen)) as server:
        result = client(server.url).fetch_since(date(2026, 4, 1))
    assert result.complete and result.pages == 3  # 2 + 2 + 1 records
    assert [q["$offset"] for q in seen] == ["0", "2", "4"]
    assert all(q["$order"] == "crash_date,collision_id" for q in seen)
    assert seen[0]["$where"] == "crash_date >= '2026-04-01T00:00:00.000'"
    assert seen[0]["X-App-Token"] == "token-from-env"
    rows = result.rows
    assert sorted(rows["COLLISION_ID"].astype(int)) == sorted(
        int(r["collision_id"]) for r in recorded_records()
    )
    first = rows[rows["COLLISION_ID"] == "4889976"].iloc[0]
    assert first["CRASH DATE"] == "04/02/2026" and first["CRASH TIME"] == "7:45"
    assert (
        first["VEHICLE TYPE CODE 1"] == "Sedan" and first["BOROUGH"] == ""
    )  # absent field -> empty


@pytest.mark.parametrize("failure", ["429", "500", "hang", "malformed"])
def test_retries_then_succeeds(failure: str) -> None:
    seen: list[dict] = []
    with LocalServer(make_handler(recorded_records(), [failure], seen)) as server:
        result = client(server.url, page_size=10).fetch_since(date(2026, 4, 1))
    assert len(result.rows) == 5 and len(seen) == 2


def test_clear_error_after_last_retry() -> None:
    with (
        LocalServer(make_handler(recorded_records(), ["500"] * 5, [])) as server,
        pytest.raises(SourceUnavailable, match="failed after 3 attempts: HTTP 500"),
    ):
        client(server.url).fetch_since(date(2026, 4, 1))


@pytest.mark.slow
def test_loader_merges_api_rows_and_quarantines_bad_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = recorded_records()
    broken = dict(records[0], collision_id="4889977", number_of_persons_injured="-2")
    records = records + [broken, "not an object"]
    with LocalServer(make_handler(records, ["429"], [])) as server:
        monkeypatch.setenv("SOCRATA_URL", server.url)
        monkeypatch.setenv(
            "NOAA_URL", server.url + "/noaa"
        )  # answers [] -> no new weather, no invention
        summary = build_dataset(
            tmp_path / "data",
            LoadConfig(page_size=4, backoff_seconds=0.01),
            now=datetime(2026, 6, 1, tzinfo=UTC),
        )
        again = build_dataset(
            tmp_path / "data",
            LoadConfig(page_size=4, backoff_seconds=0.01),
            now=datetime(2026, 6, 1, tzinfo=UTC),
        )
    # the re-fetched overlap replaces its earlier copy; the malformed record stays quarantined
    assert len(read_partitions(tmp_path / "data", API_ROWS)) == 6
    assert again.quarantined == summary.quarantined and again.rows == summary.rows
    assert summary.source == "api" and summary.api_rows_new == 6
    assert summary.quarantined == {"counts": 1, "malformed_record": 1}
    crashes = load_frames(tmp_path / "data")[0]
    assert summary.rows == 351_052 + 5 == len(crashes)
    assert (crashes["source"] == "api").sum() == 5
    # fetched from 2025-04-01 (newest held) on 2026-06-01 with 30 settle days: judged to
    # 2026-05-02. The sample's 5 crashes of 2026-04-02 are far from a full day, the other days have
    # none: every day is flagged, none is complete (completeness.py)
    assert summary.complete_days == again.complete_days == 632
    assert summary.day_flags == again.day_flags == {"empty": 396, "implausible": 1}
    flagged = pd.read_csv(tmp_path / "data" / "flagged_days.csv", parse_dates=["date"])
    assert flagged["date"].min() == pd.Timestamp("2025-04-01")
    assert flagged["date"].max() == pd.Timestamp("2026-05-02")


@pytest.mark.slow
def test_loader_falls_back_to_snapshot_when_api_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="visionzero.data")
    with LocalServer(make_handler([], ["500"] * 10, [])) as server:
        monkeypatch.setenv("SOCRATA_URL", server.url)
        summary = build_dataset(tmp_path / "data", LoadConfig(max_attempts=2, backoff_seconds=0.01))
    assert summary.source == "snapshot" and "API unreachable" in summary.source_note
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "API unreachable, using the bundled snapshot" in warnings[0]
    assert summary.rows == 351_052 and summary.complete_days == 632


def test_snapshot_replay_round_trips_and_the_cutoff_holds_it_back() -> None:
    """`snapshot_records` is the inverse of the client's mapping, and `snapshot_until` removes
    exactly those rows and complete days from the snapshot the loader reads."""
    from tests.fake_socrata import snapshot_records
    from visionzero.data.dataset import hold_back, read_snapshot_complete_days, read_snapshot_raw
    from visionzero.data.socrata import records_to_rows

    raw = read_snapshot_raw()
    replayed = records_to_rows(snapshot_records(date(2025, 3, 29), date(2025, 3, 31)))
    original = raw[raw["CRASH DATE"].isin(["03/30/2025", "03/31/2025"])]
    assert len(replayed) == len(original) > 300
    pd.testing.assert_frame_equal(
        replayed.sort_values("COLLISION_ID").reset_index(drop=True),
        original[replayed.columns].sort_values("COLLISION_ID").reset_index(drop=True),
    )
    kept, complete = hold_back(raw, read_snapshot_complete_days(), date(2024, 12, 31))
    assert len(raw) - len(kept) == len(raw[raw["CRASH DATE"].str.endswith("/2025")])
    assert complete["date"].max() == pd.Timestamp("2024-03-31")
