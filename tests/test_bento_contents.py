"""The Bento ships exactly what `service.py` imports: no training, DVC, Discord or k8s code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.slow
def test_the_bento_holds_exactly_the_served_modules(trained: dict) -> None:
    import bentoml

    for key in ("bento_tag", "arm64_bento_tag"):
        src = Path(bentoml.get(trained["production"][key]).path) / "src"
        shipped = {str(p.relative_to(src)) for p in src.rglob("*.py")}
        assert shipped == served_modules(), key
