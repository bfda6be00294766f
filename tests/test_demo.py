"""`python -m prompt_tuning.demo --quick` runs every row end to end (a few steps each) and prints the table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompt_tuning import demo

ROOT = Path(__file__).resolve().parents[1]


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
def test_quick_demo_prints_the_table(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "prompt_tuning.demo",
      "--quick",
      "--steps",
      "2",
      "--examples",
      "32",
      "--work-dir",
      str(tmp_path),
      "--greedy",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,  # one stream, in the order it was written
    text=True,
    timeout=600,
    cwd=ROOT,
    env=env,
  )
  assert out.returncode == 0, out.stdout[-4000:]
  lines = out.stdout.splitlines()
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
