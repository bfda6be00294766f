"""notebooks/colab_tpu.ipynb runs top to bottom on a CPU, with tiny stand-ins injected as papermill parameters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra: pip install -e '.[notebooks]'")
papermill = pytest.importorskip("papermill", reason="the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_tpu.ipynb"


def test_colab_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, "clear the notebook's outputs before committing"
  tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1 and "CHECKPOINT = " in tagged[0].source


def test_colab_notebook_runs_with_tiny_stand_ins(reference_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  work_dir = tmp_path / "work"
  parameters = {
    "CHECKPOINT": str(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3"),
    "GIN_FILES": ["test/prompt_tiny.gin"],
    "GIN_BINDINGS": [],
    "VOCABULARY_PATH": str(reference_dir / "t5_spm_32000.model"),
    "TRAIN_STEPS": 4,
    "BATCH_SIZE": 8,
    "PROMPT_LENGTH": 3,
    "EVAL_EVERY": 2,
    "EXAMPLES": 16,
    "INSTALL": False,
    "WORK_DIR": str(work_dir),
  }
  executed = papermill.execute_notebook(
    str(NOTEBOOK),
    str(tmp_path / "executed.ipynb"),
    parameters=parameters,
    kernel_name="python3",
    cwd=str(tmp_path),
    progress_bar=False,
    execution_timeout=300,
  )
  text = "\n".join(
    output.get("text", "") for cell in executed.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
  )
  assert "CPU device(s)" in text
  assert "257,868 parameters" in text or "parameters, embedding (32128, 4)" in text
  assert "class-label accuracy" in text and "adapter_config.json" in text
  metrics = [json.loads(line) for line in (work_dir / "prompt" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "train/loss" in m][-1] == 4
  assert any("eval/accuracy" in m for m in metrics)
  assert (work_dir / "curves.png").stat().st_size > 10_000  # The three plots were drawn.
  assert (work_dir / "peft_adapter" / "adapter_model.safetensors").is_file()
