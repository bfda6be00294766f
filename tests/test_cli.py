"""End to end through the command line's entry point (cli.main, in this process: tests/cli_runs.py), on a tiny
config and a task read from local files. The console scripts themselves (`prompt-tuning`, `t5x`) run as subprocesses
in test_help_lists_the_commands and, for every README command line, in tests/test_readme.py."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from local_task_files import cli_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_task(reference_dir, tmp_path_factory):
  return cli_flags(reference_dir, tmp_path_factory.mktemp("data"), "cli_yes_no")


def test_train_eval_infer_inspect_export(trained_run, local_task, reference_dir, tmp_path, _cli):
  # `prompt-tuning train` made the session's shared tiny run (conftest.trained_run: test/prompt_tiny.gin, 4 steps).
  assert "trainable parameters: 12 of 257,868" in trained_run.log
  metrics = [json.loads(x) for x in (trained_run.model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3, 4]
  prompt_file = trained_run.model_dir / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy"
  assert np.load(prompt_file).shape == (3, 4)

  # Resuming the finished run: restored at step 4 of 4, nothing to do.
  model_dir = trained_run.copy(tmp_path)
  again = _cli("train", *trained_run.flags, f"--gin.MODEL_DIR='{model_dir}'")
  assert "4/4" in again.stderr
  assert len([x for x in (model_dir / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]) == 4

  # Its prompt evaluated and used on a task read from local files (the same vocabulary, the same kind of question).
  flags = [*local_task, f"--gin.MODEL_DIR='{model_dir}'"]
  evaluation = _cli("eval", "--gin_file=runs/prompt_eval.gin", *flags)
  assert "cli_yes_no/accuracy" in evaluation.stdout and "loss" in evaluation.stdout
  assert (model_dir / "eval_metrics.jsonl").is_file()

  single = {}
  for mode in ("predict", "score"):
    out_file = tmp_path / f"{mode}.jsonl"
    _cli(
      "infer",
      "--gin_file=runs/prompt_infer.gin",
      *flags,
      f"--gin.INFER_MODE='{mode}'",
      f"--gin.INFER_OUTPUT='{out_file}'",
    )
    lines = single[mode] = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert len(lines) == 8 and lines[0]["inputs"].startswith("question: is apple 0 odd?")
    assert lines[0]["targets"] == "no"
    if mode == "score":
      assert set(lines[0]["scores"]) == {"no", "yes"} and all(x["prediction"] in ("no", "yes") for x in lines)
  _infer_with_several_prompts(_cli, local_task, prompt_file, single, tmp_path)

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


def _infer_with_several_prompts(_cli, local_task, trained_file, single, tmp_path):
  """infer.prompt_files: an ensemble (mean log-probability, majority vote) and mixed rows equal each prompt alone."""
  other_file = tmp_path / "other.npy"
  np.save(other_file, np.load(trained_file)[::-1] * 3.0)  # another prompt: reversed and scaled
  other_out = tmp_path / "other_score.jsonl"
  alone = [*local_task, f"--gin.MODEL_DIR='{tmp_path / 'other'}'", "--gin_file=prompts/from_file.gin"]
  _cli(
    "infer",
    "--gin_file=runs/prompt_infer.gin",
    *alone,
    f"--gin.PROMPT_FILE='{other_file}'",
    "--gin.INFER_MODE='score'",
    f"--gin.INFER_OUTPUT='{other_out}'",
  )
  other = [json.loads(x) for x in other_out.read_text().splitlines()]
  flags = [*local_task, f"--gin.MODEL_DIR='{tmp_path / 'several'}'", "--gin_file=runs/prompt_infer.gin"]

  def infer(*bindings) -> list[dict]:
    out = tmp_path / f"several_{len(list(tmp_path.glob('several_*')))}.jsonl"
    _cli("infer", *flags, *bindings, f"--gin.INFER_OUTPUT='{out}'")
    return [json.loads(x) for x in out.read_text().splitlines()]

  # Mean log-probability over the two prompts, in one batch of rows b * 2 + k.
  mean = infer(
    f"--gin.infer.prompt_files=['{trained_file}', '{other_file}']",
    "--gin.infer.ensemble='mean'",
    "--gin.INFER_MODE='score'",
  )
  assert len(mean) == 8
  for got, a, b in zip(mean, single["score"], other):
    for label in ("no", "yes"):
      assert got["scores"][label] == pytest.approx((a["scores"][label] + b["scores"][label]) / 2, abs=1e-4)
    assert got["prompt_predictions"] == {"0": a["prediction"], "1": b["prediction"]}
    assert got["prediction"] == max(got["scores"], key=got["scores"].get)
  # Majority vote of decoded outputs: two copies of the trained prompt outvote the other one.
  vote = infer(
    f"--gin.infer.prompt_files=['{other_file}', '{trained_file}', '{trained_file}']",
    "--gin.infer.ensemble='vote'",
    "--gin.INFER_MODE='predict'",
  )
  assert [x["prediction"] for x in vote] == [x["prediction"] for x in single["predict"]]
  assert all(x["votes"] >= 2 for x in vote)
  # Mixed rows: each line names its prompt; rows of both prompts share batches and score as each alone.
  rows = tmp_path / "rows.jsonl"
  texts = [x["inputs"] for x in single["score"]]
  rows.write_text("".join(json.dumps({"inputs": t, "prompt": "ab"[i % 2]}) + "\n" for i, t in enumerate(texts)))
  mixed = infer(
    f"--gin.infer.prompt_files={{'a': '{trained_file}', 'b': '{other_file}'}}",
    f"--gin.infer.input_file='{rows}'",
    "--gin.INFER_MODE='score'",
  )
  assert [x["prompt"] for x in mixed] == ["a", "b"] * 4
  for i, got in enumerate(mixed):
    expected = (single["score"] if i % 2 == 0 else other)[i]["scores"]
    assert got["scores"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
  ("settings", "message"),
  [
    (dict(ensemble="vote"), "infer.prompt_files is not"),
    (dict(prompt_files="a.npy", ensemble="vote"), "give a list of prompt files"),
    (dict(prompt_files=["a.npy", "b.npy"]), "set infer.ensemble"),
    (dict(prompt_files=["a.npy", "b.npy"], ensemble="mean"), "infer.mode = 'score'"),
    (dict(prompt_files={"a": "a.npy"}), "set infer.input_file"),
    (dict(prompt_files={"a": "a.npy"}, input_file="x.jsonl", ensemble="vote"), "unset infer.ensemble"),
    (dict(prompt_files=["a.npy"], input_file="x.jsonl", ensemble="vote"), "as a dict"),
  ],
)
def test_infer_prompt_settings_that_mean_nothing_are_refused(settings, message):
  from prompt_tuning import infer

  with pytest.raises(ValueError, match=re.escape(message)):
    infer.infer(**settings)


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
