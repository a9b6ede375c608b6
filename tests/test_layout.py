"""The package layout holds: no import cycles, stages import only downward, steps are thin, and the
steps, pipelines and entry points (run.py, service.py) import only the layers below them.

Read from the source with `ast` (nothing is imported), so a violation fails in milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "visionzero"
# A module may import its own stage and the stages before it; visionzero/status.py sits above all.
STAGES = ["platform", "data", "model", "evaluation", "serving", "rollout", "monitoring"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that `path` imports anywhere (top level, functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: name is a module when such a module exists, else an attribute.
            found.update(
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in known
                else node.module
                for alias in node.names
            )
    return found & known


GRAPH = {name: imported_modules(path, set(MODULES)) - {name} for name, path in MODULES.items()}


def stage_rank(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else len(STAGES)


def find_cycle() -> list[str] | None:
    """One import cycle as a path of modules, or None (depth-first search with colours)."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_layout_is_parsed() -> None:
    assert {f"{PACKAGE}.{stage}" for stage in STAGES} <= set(MODULES)
    assert f"{PACKAGE}.model.crash_risk" in GRAPH[f"{PACKAGE}.serving.requests"]


def test_no_import_cycles() -> None:
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


def test_stages_import_only_their_own_stage_or_lower_ones() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if target != PACKAGE and stage_rank(target) > stage_rank(source)
    ]
    assert not upward, upward


STEP_FILES = sorted(path for path in (ROOT / "steps").rglob("*.py") if path.name != "__init__.py")


@pytest.mark.parametrize("path", STEP_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_steps_call_their_stage_in_visionzero_directly(path: Path) -> None:
    """A step is a thin wrapper: its logic comes from visionzero/<its stage>/, never via another
    step, a pipeline or the service."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    stage = path.parent.name
    assert any(name.startswith(f"{PACKAGE}.{stage}.") for name in roots), roots
    assert not [name for name in roots if name.split(".")[0] in {"steps", "pipelines", "service"}]


# Everything outside tests that imports the package: steps, pipelines and the two entry points.
ENTRY_FILES = {
    module_name(path): path
    for path in sorted(
        [*(ROOT / "steps").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]
        + [ROOT / "run.py", ROOT / "service.py"]
    )
}
PROJECT = {**MODULES, **ENTRY_FILES}
PROJECT_GRAPH = {
    name: imported_modules(path, set(PROJECT)) - {name} for name, path in PROJECT.items()
}
# The command line's package: at the top, beside run.py (it starts the pipelines), not a stage.
CLI = f"{PACKAGE}.cli"
# The parts of the project each part may import; nothing imports run.py or service.py, nothing in
# the package imports the command line's, and run.py only the command line's.
MAY_IMPORT = {
    PACKAGE: {PACKAGE},
    "steps": {PACKAGE, "steps"},
    "pipelines": {PACKAGE, "steps", "pipelines"},
    "service": {PACKAGE},
    CLI: {PACKAGE, CLI, "steps", "pipelines"},
    "run": {CLI},
}


def layer(module: str) -> str:
    """The part of the project a module belongs to: its top-level name, or the cli package."""
    return CLI if module == CLI or module.startswith(f"{CLI}.") else module.split(".")[0]


def highest_stage(source: str) -> int:
    """The highest stage of visionzero/ that `source` may import: a module its own, a step its
    stage's, the service the serving stage (not rollout, monitoring or evaluation), the rest any."""
    parts = source.split(".")
    if parts[0] == "steps" and len(parts) > 1:
        return STAGES.index(parts[1])
    if parts[0] == "service":
        return STAGES.index("serving")
    return stage_rank(source) if parts[0] == PACKAGE else len(STAGES)


def may_import(source: str, target: str) -> bool:
    source_layer, target_layer = layer(source), layer(target)
    if target_layer not in MAY_IMPORT[source_layer]:
        return False
    if (
        source_layer == target_layer == "steps"
    ):  # a stage's __init__ gathers its own steps, no other's
        return target.split(".")[:2] == source.split(".")[:2]
    return (
        target == PACKAGE or target_layer != PACKAGE or stage_rank(target) <= highest_stage(source)
    )


def test_the_entry_points_are_parsed() -> None:
    assert "visionzero.data.dataset" in PROJECT_GRAPH["steps.data.data_loader"]
    assert "steps.data.data_loader" in PROJECT_GRAPH["pipelines.training"]
    assert f"{CLI}.runs" in PROJECT_GRAPH["run"]
    assert "pipelines.training" in PROJECT_GRAPH[f"{CLI}.runs"]
    assert "visionzero.serving.requests" in PROJECT_GRAPH["service"]


def test_steps_pipelines_and_entry_points_import_only_the_layers_below_them() -> None:
    forbidden = [
        f"{source} imports {target}"
        for source, targets in sorted(PROJECT_GRAPH.items())
        for target in sorted(targets)
        if not may_import(source, target)
    ]
    assert not forbidden, forbidden
