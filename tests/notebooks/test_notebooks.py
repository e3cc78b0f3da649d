"""Every notebook executes top to bottom against a real pipeline run, so the walkthroughs never rot."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_executes(name, pipeline_run, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    config, _, _ = pipeline_run
    # The kernel inherits the environment: point the notebook at the fixture's store.
    monkeypatch.setenv("TOWERFLOW_METADATA", config.metadata_path)
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # kernel "python3": jupyter_client runs its `python` argv with this interpreter, i.e. the venv's.
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    nbformat.write(notebook, tmp_path / name)  # the executed copy, for a look when a test fails
    assert os.path.getsize(tmp_path / name) > 0
