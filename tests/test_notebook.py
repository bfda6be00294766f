"""notebooks/quickstart.ipynb executes top to bottom in its shortened setting (QUICKSTART_STEPS)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra: pip install -e '.[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra: pip install -e '.[notebooks]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, "clear the notebook's outputs before committing"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("QUICKSTART_STEPS", "3")
  monkeypatch.setenv("QUICKSTART_EXAMPLES", "32")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
    notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute(env=dict(os.environ))
  text = "\n".join(
    output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
  )
  assert "3 training steps" in text
  assert "after 3 steps of prompt tuning" in text
  assert "adapter_config.json" in text
