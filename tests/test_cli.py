"""End to end through the command line's entry point (cli.main, in this process: tests/cli_runs.py), on a tiny
config and a task read from local files. The console scripts themselves (`prompt-tuning`, `t5x`) run as subprocesses
in test_help_lists_the_commands and, for every README command line, in tests/test_readme.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_cli
from local_task_files import cli_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def _cli(capfd):
  def run(*args, check=True):
    out = run_cli(capfd, *args)
    if check:
      assert out.returncode == 0, f"{args[0]} failed:\n{out.stderr[-4000:]}"
    return out

  return run


@pytest.fixture(scope="module")
def local_task(reference_dir, tmp_path_factory):
  return cli_flags(reference_dir, tmp_path_factory.mktemp("data"), "cli_yes_no")


def test_train_eval_infer_inspect_export(local_task, reference_dir, tmp_path, _cli):
  model_dir = tmp_path / "run"
  flags = [*local_task, f"--gin.MODEL_DIR='{model_dir}'"]
  train = _cli("train", *flags)
  assert "trainable parameters: 12 of 257,868" in train.stderr
  metrics = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3, 4]
  prompt_file = model_dir / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy"
  assert np.load(prompt_file).shape == (3, 4)

  # Resuming the finished run: restored at step 4 of 4, nothing to do.
  again = _cli("train", *flags)
  assert "4/4" in again.stderr
  assert len([x for x in (model_dir / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]) == 4

  evaluation = _cli("eval", "--gin_file=runs/prompt_eval.gin", *flags)
  assert "cli_yes_no/accuracy" in evaluation.stdout and "loss" in evaluation.stdout
  assert (model_dir / "eval_metrics.jsonl").is_file()

  for mode in ("predict", "score"):
    out_file = tmp_path / f"{mode}.jsonl"
    _cli(
      "infer",
      "--gin_file=runs/prompt_infer.gin",
      *flags,
      f"--gin.INFER_MODE='{mode}'",
      f"--gin.INFER_OUTPUT='{out_file}'",
    )
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert len(lines) == 8 and lines[0]["inputs"].startswith("question: is apple 0 odd?")
    assert lines[0]["targets"] == "no"
    if mode == "score":
      assert set(lines[0]["scores"]) == {"no", "yes"} and all(x["prediction"] in ("no", "yes") for x in lines)

  inspect = _cli(
    "inspect",
    str(prompt_file),
    "--checkpoint",
    str(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3"),
    "--size",
    "t5_1_1_tiny",
    "--vocab",
    str(reference_dir / "t5_spm_32000.model"),
    "--k",
    "3",
  )
  assert len([line for line in inspect.stdout.splitlines() if line.strip()]) >= 3

  peft_dir = tmp_path / "peft"
  _cli("export", str(prompt_file), str(peft_dir), "--format", "peft")
  assert (peft_dir / "adapter_config.json").is_file() and (peft_dir / "adapter_model.safetensors").is_file()


def test_bad_input_gives_one_line_not_a_traceback(local_task, tmp_path, _cli):
  missing_dir = _cli("train", *local_task, check=False)
  assert missing_dir.returncode != 0
  assert "MODEL_DIR" in missing_dir.stderr and "Traceback" not in missing_dir.stderr
  bad_flag = _cli("train", "--gin_fille=x.gin", check=False)
  assert bad_flag.returncode == 2 and "unrecognized arguments" in bad_flag.stderr
  unknown = _cli("train", "--gin_file=prompt_xxxl.gin", check=False)
  assert "not found" in unknown.stderr and "Traceback" not in unknown.stderr
  too_long = _cli(
    "train", *local_task, f"--gin.MODEL_DIR='{tmp_path / 'x'}'", "--gin.MAX_ENCODER_LENGTH=10", check=False
  )
  assert "exceeds max 10" in too_long.stderr and "Traceback" not in too_long.stderr
  wrong_prompt = tmp_path / "prompt.npy"
  np.save(wrong_prompt, np.zeros((3, 7), np.float32))
  bad_file = _cli(
    "train",
    *local_task,
    f"--gin.MODEL_DIR='{tmp_path / 'y'}'",
    "--gin_file=prompts/from_file.gin",
    f"--gin.PROMPT_FILE='{wrong_prompt}'",
    check=False,
  )
  assert bad_file.returncode == 1 and "Traceback" not in bad_file.stderr
  assert "7" in bad_file.stderr and "4" in bad_file.stderr


def test_frozen_model_without_prompt_evaluates_but_does_not_train(local_task, tmp_path, _cli):
  # PROMPT_LENGTH = 0 with the default pattern ('^(prompt|prefix)') selects nothing: the frozen model as it is.
  flags = [*local_task, f"--gin.MODEL_DIR='{tmp_path / 'frozen'}'", "--gin.PROMPT_LENGTH=0"]
  out_file = tmp_path / "score.jsonl"
  _cli(
    "infer", "--gin_file=runs/prompt_infer.gin", *flags, "--gin.INFER_MODE='score'", f"--gin.INFER_OUTPUT='{out_file}'"
  )
  lines = [json.loads(x) for x in out_file.read_text().splitlines()]
  assert len(lines) == 8 and all(x["prediction"] in ("no", "yes") for x in lines)
  evaluation = _cli("eval", "--gin_file=runs/prompt_eval.gin", *flags)
  assert "cli_yes_no/accuracy" in evaluation.stdout
  refused = _cli("train", *flags, check=False)
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert "nothing to train" in refused.stderr and "TRAINABLE_PATTERN" in refused.stderr
  assert not list((tmp_path / "frozen").glob("checkpoints/*"))


@pytest.mark.parametrize("script", ["prompt-tuning", "t5x"])
def test_help_lists_the_commands(script):
  # The console scripts setup.py installs; `t5x` is the alias a reference user's commands start with.
  path = Path(sys.executable).parent / script
  out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  for command in ("train", "eval", "infer", "inspect", "export", "tasks", "sweep", "serve"):
    assert command in out.stdout
