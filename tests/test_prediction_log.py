"""The prediction log's writer and reader on real files (served: test_prediction_log_serve.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT
from visionzero.serving.prediction_log import (
    COLUMNS,
    PredictionLog,
    prediction_log_root,
    read_predictions,
)
from visionzero.serving.prediction_sinks import DailyFiles, Stdout

BLOCK_STARTS = [0, 4, 8, 12, 16, 20]


def answer(n: int, zone: str = "892a100d2c3ffff") -> list[dict]:
    """Predictions as predict_items returns them."""
    return [
        {
            "zone": zone,
            "resolution": 9,
            "date": "2025-02-03",
            "block": [8, 12],
            "expected_crashes": 0.25 + i,
            "risk_level": "Elevated",
            "risk_index": 2,
            "p_at_least_one": 0.2,
            "weather_source": "climatology",
            "model_version": "3",
            "stage": "staging",
        }
        for i in range(n)
    ]


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl"))


def writer(root: Path, **options: object) -> PredictionLog:
    return PredictionLog(DailyFiles(root, "staging"), "staging", "3", BLOCK_STARTS, **options)


def test_rows_are_written_per_item_in_this_process_file(tmp_path: Path) -> None:
    log = writer(tmp_path)
    log.record("req-1", answer(3))
    log.record(None, answer(1))
    log.close()
    (path,) = files_under(tmp_path)
    day = path.parent.name
    assert path.parent.parent == tmp_path / "staging" and date.fromisoformat(day)
    host, pid, start_ms = path.stem.rsplit("-", 2)
    assert host and int(pid) > 0 and abs(int(start_ms) / 1000 - time.time()) < 60
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(row) for row in rows] == [COLUMNS] * 4
    assert [(r["request_id"], r["item"]) for r in rows[:3]] == [
        ("req-1", 0),
        ("req-1", 1),
        ("req-1", 2),
    ]
    assert uuid.UUID(rows[3]["request_id"]).version == 4 and rows[3]["item"] == 0  # a new id
    assert rows[0] | {"time": None} == {
        "request_id": "req-1",
        "item": 0,
        "time": None,
        "stage": "staging",
        "model_version": 3,
        "zone": "892a100d2c3ffff",
        "resolution": 9,
        "date": "2025-02-03",
        "block": 2,  # the index of the block [8, 12)
        "expected": 0.25,
        "level": "Elevated",
    }
    assert rows[0]["time"].endswith("Z") and rows[0]["time"][:10] == day


@pytest.mark.parametrize("header", ['a"},{"item": 9', "x" * 129, "two words", ""])
def test_a_request_id_that_is_not_a_plain_token_is_replaced(tmp_path: Path, header: str) -> None:
    log = writer(tmp_path)
    log.record(header, answer(2))
    log.close()
    (path,) = files_under(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["item"] for row in rows] == [0, 1]
    assert rows[0]["request_id"] == rows[1]["request_id"] != header
    assert uuid.UUID(rows[0]["request_id"]).version == 4
    assert uuid.UUID(rows[0]["request_id"]).variant == uuid.RFC_4122


def test_the_writer_thread_flushes_without_being_closed(tmp_path: Path) -> None:
    log = writer(tmp_path, flush_seconds=0.1)
    try:
        log.record("a", answer(2))
        deadline = time.monotonic() + 5
        # The file is created when the day opens, a moment before the batch is written in it.
        while time.monotonic() < deadline and not (
            files_under(tmp_path) and files_under(tmp_path)[0].read_text().endswith("\n")
        ):
            time.sleep(0.05)
        (path,) = files_under(tmp_path)
        assert len(path.read_text().splitlines()) == 2
    finally:
        log.close()


def test_a_full_buffer_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    drops: list[tuple[int, str]] = []
    log = writer(
        tmp_path,
        max_rows=5,
        flush_rows=1000,
        flush_seconds=3600,
        on_drop=lambda *d: drops.append(d),
    )
    log.record("a", answer(3))
    log.record("b", answer(3))  # 6 > 5: dropped whole
    log.record("c", answer(2))  # fits exactly
    log.record("d", answer(1))
    assert log.dropped == 4 and drops == [(3, "buffer_full"), (1, "buffer_full")]
    assert log._rows == 5 and len(log._buffer) == 2
    log.close()
    rows = read_predictions(tmp_path)
    assert sorted(set(rows["request_id"])) == ["a", "c"] and len(rows) == 5


def test_a_failing_write_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the stage folder should be")
    drops: list[tuple[int, str]] = []
    log = PredictionLog(
        DailyFiles(blocked, "staging"),
        "staging",
        "3",
        BLOCK_STARTS,
        flush_seconds=3600,
        on_drop=lambda *d: drops.append(d),
    )
    log.record("a", answer(2))
    log.flush()
    assert drops == [(2, "write_error")] and log.dropped == 2
    log.close()


def test_stdout_rows_are_json_lines_marked_for_the_log_shipper(
    capfd: pytest.CaptureFixture[str],
) -> None:
    log = PredictionLog(Stdout(), "production", "7", BLOCK_STARTS, flush_seconds=3600)
    log.record("x", answer(300))  # more than PIPE_BUF bytes: written in whole lines
    log.close()
    lines = capfd.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 300 and [r["item"] for r in rows] == list(range(300))
    assert {r["event"] for r in rows} == {"crash_risk_prediction"}
    assert {r["model_version"] for r in rows} == {7}


def test_reader_types_dedups_and_skips_a_truncated_last_line(tmp_path: Path) -> None:
    log = writer(tmp_path)
    log.record("a", answer(2))
    log.record("b", answer(1, zone="882a100d2dfffff"))
    log.close()
    (path,) = files_under(tmp_path)
    shutil.copy(path, path.with_name("host-1-1.jsonl"))  # the same rows twice
    with path.open("ab") as file:  # a process killed in the middle of a write
        file.write(b'{"request_id": "c", "item": 0, "ti')
    rows = read_predictions(tmp_path)
    assert list(rows.columns) == COLUMNS
    assert rows.attrs["skipped_lines"] == 1
    assert list(zip(rows["request_id"], rows["item"], strict=True)) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
    ]
    assert str(rows["time"].dtype) == "datetime64[ns, UTC]"
    assert rows["date"].dtype == np.dtype("datetime64[ns]")
    assert (rows["date"] == pd.Timestamp("2025-02-03")).all()
    for column in ("item", "model_version", "resolution", "block"):
        assert rows[column].dtype == np.int64, column
    assert rows["expected"].tolist() == [0.25, 1.25, 0.25]


def test_reader_filters_by_day_and_stage(tmp_path: Path) -> None:
    for stage in ("production", "staging"):
        log = PredictionLog(DailyFiles(tmp_path, stage), stage, "1", BLOCK_STARTS)
        log.record(stage, answer(1))
        log.close()
    (old,) = files_under(tmp_path / "production")
    old_day = old.parent.with_name("2020-01-01")
    old.parent.rename(old_day)
    assert sorted(read_predictions(tmp_path)["stage"]) == ["production", "staging"]
    assert list(read_predictions(tmp_path, stages=["staging"])["stage"]) == ["staging"]
    assert list(read_predictions(tmp_path, since=date.today())["stage"]) == ["staging"]
    empty = read_predictions(tmp_path / "missing")
    assert empty.empty and list(empty.columns) == COLUMNS
    assert str(empty["time"].dtype) == "datetime64[ns, UTC]"


def test_the_setting_chooses_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VZ_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VZ_PREDICTION_LOG", raising=False)
    assert prediction_log_root() == (tmp_path / "home" / "predictions").resolve()
    monkeypatch.setenv("VZ_PREDICTION_LOG", str(tmp_path / "logs"))
    assert prediction_log_root() == tmp_path / "logs"
    for value in ("off", "stdout", "STDOUT"):
        monkeypatch.setenv("VZ_PREDICTION_LOG", value)
        assert prediction_log_root() is None


def test_the_day_cap_holds_for_all_the_stage_writers_together(tmp_path: Path) -> None:
    """Two writers (two workers) of one stage share the day's bytes; past them whole rows are
    dropped, counted as `day_cap`, and the next writes of the day are dropped too."""
    cap = 2000
    drops: list[tuple[int, str]] = []
    logs = [
        PredictionLog(
            DailyFiles(tmp_path, "staging", max_day_bytes=cap),
            "staging",
            "3",
            BLOCK_STARTS,
            flush_seconds=3600,
            on_drop=lambda *d: drops.append(d),
        )
        for _ in range(2)
    ]
    for round_ in range(3):
        for number, log in enumerate(logs):
            log.record(f"r{round_}-{number}", answer(4))
            log.flush()
    for log in logs:
        log.close()
    files = files_under(tmp_path)
    total = sum(path.stat().st_size for path in files)
    assert len(files) == 2 and cap - 300 < total <= cap  # filled up to the last whole row
    written = len(read_predictions(tmp_path))
    dropped = sum(rows for rows, _ in drops)
    assert {reason for _, reason in drops} == {"day_cap"}
    assert written + dropped == 24 and sum(log.dropped for log in logs) == dropped
    assert all(line.endswith("}") for p in files for line in p.read_text().splitlines())


def test_a_writer_deletes_day_folders_older_than_the_days_kept(tmp_path: Path) -> None:
    today = date.today()
    stage = tmp_path / "staging"
    ages = (0, 1, 2, 3, 40)
    for age in ages:
        folder = stage / (today - timedelta(days=age)).isoformat()
        folder.mkdir(parents=True)
        (folder / "host-1-1.jsonl").write_text("")
    (stage / "notes").mkdir()  # not a day folder: left alone
    other = tmp_path / "production" / "2000-01-01"  # another stage: its own writer's job
    other.mkdir(parents=True)
    log = PredictionLog(DailyFiles(tmp_path, "staging", keep_days=3), "staging", "3", BLOCK_STARTS)
    log.record("a", answer(1))
    log.close()
    kept = sorted(p.name for p in stage.iterdir() if p.is_dir())
    assert kept == sorted(
        [(today - timedelta(days=age)).isoformat() for age in (0, 1, 2)] + ["notes"]
    )
    assert other.exists()


def test_the_defaults_keep_what_the_monitor_reads_and_bound_a_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visionzero.monitoring.traffic import TrafficConfig
    from visionzero.platform.settings import Settings

    for name in ("VZ_PREDICTION_LOG_MAX_DAY_BYTES", "VZ_PREDICTION_LOG_KEEP_DAYS"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert defaults.vz_prediction_log_keep_days > TrafficConfig().lookback_days
    assert 0 < defaults.vz_prediction_log_max_day_bytes <= 1024**3


def test_stdout_keeps_to_its_share_of_the_day(capfd: pytest.CaptureFixture[str]) -> None:
    drops: list[tuple[int, str]] = []
    log = PredictionLog(
        Stdout(max_day_bytes=1000),
        "production",
        "7",
        BLOCK_STARTS,
        flush_seconds=3600,
        on_drop=lambda *d: drops.append(d),
    )
    log.record("x", answer(20))
    log.close()
    out = capfd.readouterr().out
    assert 700 < len(out.encode()) <= 1000
    assert len(out.splitlines()) + sum(rows for rows, _ in drops) == 20
    assert {reason for _, reason in drops} == {"day_cap"}


def test_no_log_inside_a_bento(tmp_path: Path) -> None:
    """This code as a Bento holds it (`<bento>/src/`, `<bento>/bento.yaml`), run with no VZ_HOME:
    the default log folder would be inside the Bento, so the log is off, with a warning."""
    bento = tmp_path / "crash_risk" / "tag"
    shutil.copytree(ROOT / "visionzero", bento / "src" / "visionzero")
    (bento / "bento.yaml").write_text("service: service:CrashRisk\n")
    probe = (
        "from visionzero.serving.prediction_log import open_sink, prediction_log_target\n"
        "print(prediction_log_target(), open_sink('production'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VZ_")}
    inside = str(bento / "src" / "logs")
    results = {}
    for name, extra in {"unset": {}, "inside": {"VZ_PREDICTION_LOG": inside}}.items():
        results[name] = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=bento / "src",
            env={**clean, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
    for result in results.values():
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["None", "None"]
        assert "is inside the Bento" in result.stderr and "VZ_HOME" in result.stderr
    outside = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=bento / "src",
        env={**clean, "VZ_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outside.stdout.split()[0] == str(tmp_path / "home" / "predictions")
    assert not list(bento.rglob("*.jsonl")) and not (bento / "src" / ".vz").exists()


def test_the_serve_check_request_is_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` checks each backend with one prediction under an id only it knows: no traffic."""
    from visionzero.platform.settings import UNLOGGED_REQUEST_ID
    from visionzero.rollout.backend import SMOKE_REQUEST_ID

    monkeypatch.setenv(UNLOGGED_REQUEST_ID, SMOKE_REQUEST_ID)
    log = writer(tmp_path)
    log.record(SMOKE_REQUEST_ID, answer(1))
    log.record("vz-check-guess", answer(1))
    log.close()
    assert read_predictions(tmp_path)["request_id"].tolist() == ["vz-check-guess"]
