"""The data_loader and the training pipeline at real scale: 2.5 million crash rows on one machine.

The input is built by replaying the bundled real rows with new collision ids and dates shifted back
by whole 52-week years (weekdays kept), as if the backfill had fetched ~20 years of history: for
timing only, never for training or tests of quality. Every store lives in a temporary folder that
is removed afterwards. Stages, each a process of its own (its peak RSS read with wait4):
  merge        the replayed rows spooled as the backfill's monthly windows, merged and versioned
  pipeline     `run.py --offline`: the whole training pipeline on the merged dataset
  incremental  a daily run's data_loader work: one new day from a local SODA-format server, the
               touched months rewritten, versioned and pinned
The last line printed is one JSON object (rows, loader_s, pipeline_s, incremental_s,
peak_rss_gib, ...).

Run: .venv/bin/python benchmarks/scale.py [--rows 2500000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._load import cpu_model  # noqa: E402

YEAR = 364  # days: 52 weeks, so a replayed crash keeps its weekday
ID_OFFSET = 100_000_000  # replayed ids never meet a real one
NEW_DAY = "2025-04-02"  # the incremental run's new day: the one after the snapshot's last
# ZenML's step lines, with colour codes or (NO_COLOR) backticks around the name and the time
STEP_DONE = re.compile(r"Step `?(\w+)`? has finished in `?([0-9.]+)(m?s)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def environment(tmp: Path) -> dict[str, str]:
    """Every store in tmp, nothing from the user's configuration."""
    env = {
        **os.environ,
        "VZ_HOME": str(tmp / "home"),
        "VZ_DATA_DIR": str(tmp / "project" / "data"),
        "ZENML_CONFIG_PATH": str(tmp / "home" / "zenml"),
        "BENTOML_HOME": str(tmp / "home" / "bentoml"),
        "NO_COLOR": "1",
        "ZENML_ANALYTICS_OPT_IN": "false",
        "KERAS_BACKEND": "jax",
    }
    for name in ("DISCORD_WEBHOOK_URL", "MLFLOW_TRACKING_URI", "ZENML_STORE_URL", "KUBECONFIG"):
        env.pop(name, None)
    return env


def run_stage(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GiB, output) of one child process; fails loudly."""
    start = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        print(output[-4000:])
        raise SystemExit(f"stage {args[1:]} failed")
    return seconds, usage.ru_maxrss / 2**20, output  # ru_maxrss is in KiB on Linux


def replayed_rows(rows: int) -> tuple[object, int]:
    """API rows (CSV columns, strings) replaying the snapshot year-shifted until the dataset (the
    snapshot's rows plus these) holds `rows`; and the number of copies."""
    import pandas as pd

    from visionzero.data.dataset import read_snapshot_raw

    raw = read_snapshot_raw()
    wanted = rows - len(raw)
    dates = pd.to_datetime(raw["CRASH DATE"], format="%m/%d/%Y")
    ids = pd.to_numeric(raw["COLLISION_ID"])
    copies, parts, held = 0, [], 0
    while held < wanted:
        copies += 1
        part = raw.copy()
        part["COLLISION_ID"] = (ids + copies * ID_OFFSET).astype(str)
        part["CRASH DATE"] = (dates - pd.Timedelta(days=copies * YEAR)).dt.strftime("%m/%d/%Y")
        parts.append(part)
        held += len(part)
    return pd.concat(parts, ignore_index=True).iloc[:wanted], copies


def stage_merge(rows: int) -> None:
    """Spool the replayed rows as the backfill's monthly windows, then let the backfill merge and
    version them (every window spooled: nothing is fetched)."""
    import pandas as pd

    from visionzero.data.backfill import Spool, backfill, month_windows
    from visionzero.data.dataset import LoadConfig
    from visionzero.data.socrata import FetchResult
    from visionzero.platform.settings import paths

    start = time.perf_counter()
    api_rows, copies = replayed_rows(rows)
    month = pd.to_datetime(api_rows["CRASH DATE"], format="%m/%d/%Y").dt.strftime("%Y-%m")
    now = datetime.now(UTC)
    since = pd.Timestamp(month.min() + "-01").date()
    spool = Spool(paths().backfill)
    by_month = dict(tuple(api_rows.groupby(month.to_numpy())))
    for window in month_windows(since, now.date()):
        frame = by_month.get(window.name, api_rows.iloc[:0])
        spool.add(window, FetchResult(rows=frame, pages=1, complete=True), now)
    print(
        f"replayed {len(api_rows)} rows ({copies} year-shifted copies from {since}), spooled in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    start = time.perf_counter()
    report = backfill(LoadConfig(), since, now=now, progress=lambda line: None)
    print(
        f"merged: {report.summary.rows} rows, {report.summary.complete_days} complete days, "
        f"{report.summary.months_rewritten} months written in {time.perf_counter() - start:.1f} s"
    )


def new_day_records() -> list[dict]:
    """One new day in the SODA format: the snapshot's busiest complete day replayed on NEW_DAY."""
    import pandas as pd

    from visionzero.data.dataset import read_snapshot_complete_days, read_snapshot_raw
    from visionzero.data.schema import API_TO_CSV

    raw = read_snapshot_raw()
    complete = read_snapshot_complete_days()
    complete_dates = set(pd.to_datetime(complete["date"]).dt.strftime("%m/%d/%Y"))
    busiest = raw.loc[raw["CRASH DATE"].isin(complete_dates), "CRASH DATE"].value_counts().index[0]
    day = raw[raw["CRASH DATE"] == busiest]
    to_api = {csv: api for api, csv in API_TO_CSV.items()}
    records = []
    for i, row in enumerate(day.to_dict("records")):
        record = {to_api[k]: v for k, v in row.items() if k in to_api and v != ""}
        record["crash_date"] = f"{NEW_DAY}T00:00:00.000"
        record["collision_id"] = str(2 * ID_OFFSET + i)
        records.append(record)
    return records


def stage_incremental() -> None:
    """The data_loader's work on a daily run: fetch since the cursor from a local SODA-format
    server (one new day; NOAA answers nothing new), rebuild, version, pin."""
    records = json.dumps(new_day_records()).encode()

    class Soda(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            offset = re.search(r"offset=(\d+)", self.path)
            body = records if offset is None or offset.group(1) == "0" else b"[]"
            body = b"[]" if self.path.startswith("/noaa") else body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Soda)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ.update({"SOCRATA_URL": url + "/resource", "NOAA_URL": url + "/noaa"})
    from steps.data.data_loader import load_dataset
    from visionzero.data.dataset import LoadConfig
    from visionzero.platform.settings import configure_environment

    configure_environment()
    start = time.perf_counter()
    dataset = load_dataset(LoadConfig())
    print(
        f"incremental: {dataset.api_rows_new} new API rows ({dataset.source_note}), "
        f"{dataset.months_rewritten} months rewritten, {time.perf_counter() - start:.1f} s"
    )
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_500_000)
    parser.add_argument("--stage", choices=["merge", "incremental"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "merge":
        return stage_merge(args.rows)
    if args.stage == "incremental":
        return stage_incremental()

    load = os.getloadavg()[0]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores, {memory:.0f} GiB, load average {load:.2f} at start"
    )
    print(f"machine: {machine}; Python {platform.python_version()}")
    tmp = Path(tempfile.mkdtemp(prefix="vz-scale-"))
    try:
        rows, steps, stages = run_stages(args.rows, environment(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = summary(rows, steps, stages, machine)
    print(
        f"rows {rows:,}: data_loader {result['loader_s']} s (<= 90), pipeline "
        f"{result['pipeline_s']} s (<= 360), incremental {result['incremental_s']} s (<= 60), "
        f"peak RSS {result['peak_rss_gib']} GiB (<= 6)"
    )
    print(json.dumps(result))


def run_stages(
    rows: int, env: dict[str, str]
) -> tuple[int, dict[str, float], dict[str, tuple[float, float]]]:
    """The three stages in order, their lines printed as they end: the merged row count, the
    pipeline's step times and each stage's (wall seconds, peak RSS GiB)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    merge_s, merge_gib, out = run_stage([*me, "--stage", "merge", "--rows", str(rows)], env)
    print(out.strip().splitlines()[-2:][0], "\n" + out.strip().splitlines()[-1])
    merged = int(re.search(r"merged: (\d+) rows", out).group(1))
    pipeline_s, pipeline_gib, out = run_stage([sys.executable, "run.py", "--offline"], env)
    steps = {
        name: float(value) / (1000 if unit == "ms" else 1)
        for name, value, unit in STEP_DONE.findall(ANSI.sub("", out))
    }
    if "data_loader" not in steps:
        raise SystemExit(f"no step times in the pipeline's output:\n{out[-3000:]}")
    print("pipeline steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    decision = re.search(r"decision: action=\S+", ANSI.sub("", out))
    print(decision.group(0) if decision else "decision: not found in the output")
    incremental_s, incremental_gib, out = run_stage([*me, "--stage", "incremental"], env)
    print(out.strip().splitlines()[-1])
    stages = {
        "merge": (merge_s, merge_gib),
        "pipeline": (pipeline_s, pipeline_gib),
        "incremental": (incremental_s, incremental_gib),
    }
    return merged, steps, stages


def summary(
    rows: int, steps: dict[str, float], stages: dict[str, tuple[float, float]], machine: str
) -> dict:
    """The run as the one JSON object printed last."""
    return {
        "rows": rows,
        "loader_s": round(steps["data_loader"], 1),
        "pipeline_s": round(stages["pipeline"][0], 1),
        "incremental_s": round(stages["incremental"][0], 1),
        "peak_rss_gib": round(max(gib for _, gib in stages.values()), 2),
        "merge_s": round(stages["merge"][0], 1),
        "steps_s": {k: round(v, 1) for k, v in steps.items()},
        "peak_rss_gib_by_stage": {name: round(gib, 2) for name, (_, gib) in stages.items()},
        "targets": {"loader_s": 90, "pipeline_s": 360, "incremental_s": 60, "peak_rss_gib": 6},
        "machine": machine,
    }


if __name__ == "__main__":
    main()
