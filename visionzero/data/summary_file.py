"""The last loaded dataset's summary, kept beside the stores for `run.py status`.

Written here, in the data stage, so the data step needs nothing above it; `visionzero/status.py`
reads it back."""

from __future__ import annotations

import json

from visionzero.platform.settings import paths


def save_data_summary(summary: dict) -> None:
    paths().data_summary.parent.mkdir(parents=True, exist_ok=True)
    paths().data_summary.write_text(json.dumps(summary, indent=2))
