"""Check that every package locked for the Raspberry Pi Bento has a linux/arm64 (aarch64) wheel.

Downloads nothing into the project: pip fetches the wheels into a temporary folder and throws them
away. Exit 0 when all have wheels, 1 when one does not, 2 (with the reason) when the package index
is unreachable.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements-serving-arm64.lock"
PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64"]
INDEX = "https://pypi.org/simple/pip/"


def index_reachable() -> str | None:
    try:
        urllib.request.urlopen(INDEX, timeout=10).close()
        return None
    except OSError as exc:
        return f"{INDEX} unreachable ({exc})"


def locked_requirements() -> list[str]:
    """`name==version` of each locked package (its `--hash` lines and line continuation off)."""
    return [
        line.split(";")[0].removesuffix("\\").strip()
        for line in LOCK.read_text().splitlines()
        if line.strip() and not line.startswith(("#", " ", "-"))
    ]


def main() -> int:
    reason = index_reachable()
    if reason:
        print(f"SKIPPED: {reason}")
        return 2
    requirements = locked_requirements()
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    missing = []
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                *platform_args,
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "-d",
                tmp,
                *requirements,
            ],
            capture_output=True,
            text=True,
        )
        have = {p.name.split("-")[0].lower().replace("_", "-") for p in Path(tmp).glob("*.whl")}
    for requirement in requirements:
        name = requirement.split("==")[0].lower().replace("_", "-").replace(".", "-")
        if name not in {h.replace(".", "-") for h in have}:
            missing.append(requirement)
    if missing or out.returncode != 0:
        print("no aarch64 wheel for:", ", ".join(missing) or "(see pip)", out.stderr[-1500:])
        return 1
    print(f"OK: all {len(requirements)} packages locked for the arm64 Bento have aarch64 wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
