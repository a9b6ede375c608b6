"""Put a trained model into the BentoML store and build the server and Raspberry Pi Bentos around it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def save_model(model_dir: Path, model_version: int, metrics: dict | None, data_version: str | None) -> str:
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
    """`bentoml build` in a subprocess (the service reads VZ_MODEL_TAG when it is imported); returns the tag."""
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", bentofile, "--output", "tag"]
    if platform:
        cmd += ["--platform", platform]
    env = {**os.environ, "VZ_MODEL_TAG": model_tag, "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bentoml build -f {bentofile} failed:\n{out.stderr[-2000:]}")
    tags = [line.split("__tag__:", 1)[1].strip() for line in out.stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise RuntimeError(f"bentoml build printed no tag:\n{out.stdout[-1000:]}")
    return tags[-1]
