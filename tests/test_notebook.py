"""The exploration notebook runs top to bottom on the bundled data (executed, not just present)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # integration tier: see pyproject.toml


def test_exploration_notebook_executes() -> None:
    notebook = nbformat.read(ROOT / "notebooks" / "explore_data.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    ]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "351052 rows; 632 complete days" in text
