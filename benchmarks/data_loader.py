"""Wall time and peak memory of loading and validating the whole bundled snapshot (offline).

Run: .venv/bin/python benchmarks/data_loader.py
"""

from __future__ import annotations

import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from visionzero.data.dataset import LoadConfig, build_dataset, read_snapshot_raw  # noqa: E402
from visionzero.data.validation import validate  # noqa: E402


def main() -> None:
    start = time.perf_counter()
    raw = read_snapshot_raw()
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    typed, quarantine = validate(raw, "snapshot")
    validate_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = build_dataset(Path(tmp) / "data", LoadConfig(offline=True))
        build_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"machine: {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{__import__('os').cpu_count()} cores"
    )
    print(f"read snapshot CSV:        {read_s:6.2f} s  ({len(raw):,} rows)")
    print(
        f"validate:                 {validate_s:6.2f} s  "
        f"({len(typed):,} typed, {len(quarantine):,} quarantined)"
    )
    print(
        f"build_dataset (all files): {build_s:6.2f} s  "
        f"({summary.rows:,} rows, {summary.complete_days} complete days)"
    )
    print(f"peak memory (max RSS):    {peak_mib:6.0f} MiB")


if __name__ == "__main__":
    main()
