"""Releases that fail in a chosen way, built into the current BentoML store.

`python -m tests.broken_releases MODEL_TAG VERSION WORKDIR` prints the release as JSON: tests whose
stores belong to a subprocess's environment build it there.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def weekday_only_release(model_tag: str, model_version: int, workdir: Path) -> dict:
    """A release whose model loads and answers weekdays (so it passes serve's check) but fails
    with a 500 on any other day type: its block shares keep only the first day type, as a bug in
    a new share fit could. Saved and built under a tag of its own."""
    import bentoml

    from visionzero.serving.bento_build import Release, build_bento, save_model

    model_dir = workdir / "model"
    shutil.copytree(bentoml.models.get(model_tag).path, model_dir)
    meta_path = model_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["p_block"] = meta["p_block"][:1]
    meta_path.write_text(json.dumps(meta))
    saved = save_model(model_dir, model_version, None, None)
    return Release(
        model_version=model_version,
        model_tag=saved,
        bento_tag=build_bento(saved, "bentofile.yaml"),
        arm64_bento_tag="none",
    )


if __name__ == "__main__":
    from visionzero.platform.settings import configure_environment

    configure_environment()
    tag, version, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    print(weekday_only_release(tag, version, folder).model_dump_json())
