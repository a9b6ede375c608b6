"""Wall time and peak memory of the data_loader's work on the whole bundled snapshot (offline):
read and validate, the first build (every month written), DVC versioning and the run's pinned
copy, a second build with nothing new (no month rewritten), and reading the frames back.

Run: .venv/bin/python benchmarks/data_loader.py
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def timed(label: str, work: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = work()
    print(f"{label:<34}{time.perf_counter() - start:6.2f} s")
    return result


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="vz-bench-"))  # every store in here, not the user's
    os.environ.update({"VZ_HOME": str(tmp / "home"), "VZ_DATA_DIR": str(tmp / "project/data")})
    try:
        measure(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(tmp: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from visionzero.data.dataset import LoadConfig, build_dataset, load_frames, read_snapshot_raw
    from visionzero.data.validation import validate
    from visionzero.data.versioning import checkout_version, version_data_dir

    print(
        f"machine: {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )
    data_dir, offline = tmp / "project" / "data", LoadConfig(offline=True)
    raw = timed("read snapshot CSV", read_snapshot_raw)
    typed, _ = timed("validate", lambda: validate(raw, "snapshot"))
    first = timed("build_dataset, first (all months)", lambda: build_dataset(data_dir, offline))
    version = timed("DVC add + push", lambda: version_data_dir(data_dir))
    pinned = timed("checkout_version", lambda: checkout_version(version))
    again = timed("build_dataset, nothing new", lambda: build_dataset(data_dir, offline))
    timed("DVC add, nothing new", lambda: version_data_dir(data_dir))
    timed("load_frames", lambda: load_frames(pinned))
    print(
        f"{first.rows:,} rows ({len(typed):,} validated), {first.complete_days} complete days;"
        f" months written: {first.months_rewritten}, then {again.months_rewritten}"
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
