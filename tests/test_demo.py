"""`python -m prompt_tuning.demo --quick` runs every row end to end (a few steps each) and prints the table."""

import contextlib
import json
import sys

import gin
import numpy as np
import pytest

from prompt_tuning import demo
from prompt_tuning.serve import store


def test_table_formatting():
  rows = [
    demo.Result("frozen, no prompt", 0.5, None, 0, 0, 0.0, 0, 1000),
    demo.Result("prompt tuning", 0.625, 0.6, 5120, 123_456, 61.2, 400, 1000),
  ]
  table = demo.format_table(rows).splitlines()
  assert table[0].split()[:2] == ["method", "accuracy"]
  assert "62.5%" in table[3] and "5,120" in table[3] and "123.5 kB" in table[3] and "400" in table[3]
  assert "50.0%" in table[2] and table[2].count(" - ") >= 2


def test_reference_results_cover_every_row():
  record = json.loads(demo.RECORDED_RESULTS.read_text())
  names = {r["name"] for r in record["rows"]}
  assert {row.name for row in demo.ROWS} <= names
  for r in record["rows"]:
    assert 0.0 <= r["accuracy"] <= 1.0 and r["examples"] == 1000


def test_record_needs_a_full_live_run():
  with pytest.raises(SystemExit):
    demo._parse(["--record", "--quick"])


@pytest.mark.slow
def test_quick_demo_prints_the_table(tmp_path, capsys, monkeypatch):
  # `python -m prompt_tuning.demo --quick ...` is `demo.main([...])`, run here: its two streams as one, in the order
  # they were written; JAX's persistent compilation cache off, as tests/cli_runs.py leaves it for in-process commands.
  monkeypatch.setenv("PROMPT_TUNING_COMPILATION_CACHE", "off")
  args = ["--quick", "--steps", "2", "--examples", "32", "--work-dir", str(tmp_path)]
  gin.clear_config()
  try:
    with contextlib.redirect_stderr(sys.stdout):
      code = demo.main([*args, "--library", str(tmp_path / "library"), "--greedy"])
  finally:
    gin.clear_config()
  out = capsys.readouterr()
  assert code == 0, out.out[-4000:]
  lines = out.out.splitlines()
  assert not [line for line in lines if "ERROR" in line], "no ERROR line unless something failed"
  names = [row.name for row in demo.ROWS]
  table = [line for line in lines if line.split("  ")[0] in names]
  assert [line.split("  ")[0] for line in table] == names
  assert all(line.count("%") == 2 for line in table)  # ranked accuracy and greedy exact match
  # Each row is printed as soon as it is done: before the next row's run starts ("== <name> (<config>)").
  for done, following in zip(names, names[1:]):
    row_line = next(i for i, line in enumerate(lines) if line.startswith(done + "  "))
    assert row_line < next(i for i, line in enumerate(lines) if line.startswith(f"== {following} ("))
  assert any("train:" in line for line in lines)  # the trainer's progress bar
  for name in ("prompt", "prefix", "model"):
    assert (tmp_path / name / "checkpoints").is_dir()
  assert not (tmp_path / "no_prompt" / "checkpoints").exists() or not any(
    (tmp_path / "no_prompt" / "checkpoints").iterdir()
  )
  # The trained prompt and the folded prefix, as the serving library reads them, equal to the runs' last exports.
  assert sorted(p.name for p in (tmp_path / "library").iterdir()) == [
    "animal_or_plant.npy",
    "animal_or_plant_prefix.safetensors",
  ]
  prompt_method, prompt = store.read_entry_file(tmp_path / "library" / "animal_or_plant.npy")
  prefix_method, prefix = store.read_entry_file(tmp_path / "library" / "animal_or_plant_prefix.safetensors")
  assert (prompt_method, prefix_method) == ("prompt", "prefix")
  np.testing.assert_array_equal(
    prompt["prompt"], np.load(tmp_path / "prompt" / "numpy_checkpoints" / "checkpoint_2" / "prompt.npy")
  )
  assert store.read_entry_file(tmp_path / "prefix" / "numpy_checkpoints" / "checkpoint_2")[1].keys() == prefix.keys()


def test_the_shipped_library_prompt_beats_the_frozen_model(tmp_path, capfd):
  """The prompt in prompt_tuning/assets/demo_library is a recorded demo run's (71.2% on the 1,000 test words): read
  as PROMPT_FILE by `infer` (configs/demo: the test split, score mode) it ranks the labels of held-out words far
  above the frozen model's 50%."""
  from cli_runs import run_cli

  from prompt_tuning import demo_data

  shipped = demo_data.DEMO_LIBRARY_DIR / "animal_or_plant.npy"
  accuracies = {}
  for name, extra in (("frozen", ["--gin_file=demo/no_prompt.gin"]), ("shipped", ["--gin_file=demo/prompt.gin"])):
    if name == "shipped":
      extra += ["--gin_file=prompts/from_file.gin", f"--gin.PROMPT_FILE='{shipped}'"]
    output = tmp_path / f"{name}.jsonl"
    done = run_cli(
      capfd,
      "infer",
      "--gin_file=runs/prompt_infer.gin",
      *extra,
      f"--gin.MODEL_DIR='{tmp_path / name}'",
      f"--gin.INFER_OUTPUT='{output}'",
      "--gin.infer.num_examples=200",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = demo._read_predictions(output)
    assert len(rows) == 200
    accuracies[name] = sum(r["prediction"] == r["targets"] for r in rows) / len(rows)
  assert accuracies["frozen"] <= 0.55 and accuracies["shipped"] >= 0.65, accuracies
