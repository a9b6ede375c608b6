"""Every package of the Raspberry Pi Bento has an aarch64 wheel.

Needs the package index; skipped without.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # integration tier: see pyproject.toml


def test_arm64_bento_packages_have_aarch64_wheels() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_arm64_wheels.py")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode == 2:
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("OK: all")
