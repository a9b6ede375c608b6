"""Put a trained model into the BentoML store.

Then build the server and Raspberry Pi Bentos around it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from visionzero.platform.settings import MODEL_NAME, REPO_ROOT

ARM64_PLATFORM = "aarch64-manylinux_2_28"  # uv's name for the Pi 5's linux/arm64 (glibc 2.28+)


class Release(BaseModel):
    """A model ready to serve: its version, its model in the Bento store and both Bentos."""

    model_version: int
    model_tag: str
    bento_tag: str
    arm64_bento_tag: str


def save_model(
    model_dir: Path, model_version: int, metrics: dict | None, data_version: str | None
) -> str:
    """Copy the native-format model into the Bento store; returns the model tag."""
    import bentoml

    with bentoml.models.create(
        MODEL_NAME,
        labels={"model_version": str(model_version), "data_version": str(data_version)},
        metadata={"model_version": model_version, "metrics": metrics or {}},
    ) as bento_model:
        target = Path(bento_model.path)
        for item in Path(model_dir).iterdir():
            shutil.copy2(item, target / item.name)
        meta = json.loads((target / "meta.json").read_text())
        meta.update({"model_version": str(model_version), "metrics": metrics})
        (target / "meta.json").write_text(json.dumps(meta))
    return str(bento_model.tag)


def build_bento(model_tag: str, bentofile: str, platform: str | None = None) -> str:
    """Build a Bento in-process; the model tag is stored as the Bento argument service.py reads."""
    import bentoml

    bento = bentoml.bentos.build_bentofile(
        str(REPO_ROOT / bentofile),
        build_ctx=str(REPO_ROOT),
        platform=platform,
        args={"model_tag": model_tag},
        # re-import service.py: its model reference is read from the arguments at import
        reload=True,
    )
    return str(bento.tag)
