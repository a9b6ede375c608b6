"""The Bento ships exactly what `service.py` imports: no training, DVC, Discord or k8s code."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from pip_requirements_parser import RequirementsFile

ROOT = Path(__file__).resolve().parent.parent
SERVING_LOCKS = ("requirements-serving.lock", "requirements-serving-arm64.lock")


def served_modules() -> set[str]:
    """Files of the visionzero modules service.py imports, followed transitively through the AST."""
    wanted, seen = ["service.py"], set()
    while wanted:
        path = wanted.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if not name.startswith("visionzero"):
                    continue
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # a package's __init__ is imported too
                    base = ROOT.joinpath(*parts[:depth])
                    for candidate in (base / "__init__.py", base.with_suffix(".py")):
                        if candidate.exists():
                            wanted.append(str(candidate.relative_to(ROOT)))
    return seen


def test_the_served_modules_leave_training_and_rollout_out() -> None:
    modules = served_modules()
    assert "visionzero/serving/requests.py" in modules
    assert not [m for m in modules if m.startswith(("visionzero/rollout", "visionzero/evaluation"))]
    assert "visionzero/model/tuning.py" not in modules


def hashed(requirements: RequirementsFile) -> dict[str, list[str]]:
    """Each requirement (as BentoML's parser reads it) and its sha256 hashes, a repeated line's
    merged."""
    found: dict[str, list[str]] = {}
    for req in requirements.requirements:
        found.setdefault(req.req.name.lower() + str(req.req.specifier), []).extend(req.hash_options)
    return found


@pytest.mark.parametrize("lock", SERVING_LOCKS)
def test_serving_locks_pin_every_package_by_version_and_hash(lock: str) -> None:
    """What the Bento images install: every line one exact version with its sha256 hashes (uv, as
    the Bento's Dockerfile runs it, checks them)."""
    text = (ROOT / lock).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert len(lines) > 50
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^ ;]+ \\", line), line
    requirements = hashed(RequirementsFile.from_file(str(ROOT / lock)))
    assert len(requirements) == len(lines)
    for name, hashes in requirements.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_arm64_wheel_check_reads_the_hashed_lock() -> None:
    spec = importlib.util.spec_from_file_location("check", ROOT / "scripts/check_arm64_wheels.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    locked = check.locked_requirements()
    assert "bentoml==1.4.39" in locked
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9A-Za-z.+!-]+", r) for r in locked), locked


@pytest.mark.slow
def test_the_bento_holds_exactly_the_served_modules(trained: dict) -> None:
    """The sources of service.py's imports, and the hashed lock as the image installs it (BentoML
    adds its own `bentoml==` line, which the lock already pins with its hashes)."""
    import bentoml

    for key, lock in zip(("bento_tag", "arm64_bento_tag"), SERVING_LOCKS, strict=True):
        bento = Path(bentoml.get(getattr(trained.production, key)).path)
        src = bento / "src"
        shipped = {str(p.relative_to(src)) for p in src.rglob("*.py")}
        assert shipped == served_modules(), key
        installed = RequirementsFile.from_file(str(bento / "env/python/requirements.txt"))
        assert hashed(installed) == hashed(RequirementsFile.from_file(str(ROOT / lock))), key
