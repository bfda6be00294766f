"""Bad input faults of issue #31 (probes 12-20 and 24 of ../shared/faults/probes-2026-12-06.md): prompt files, export
and infer inputs, the command line's gin values, splits, counts and learning rates, a resumed run's train file, and
gin includes shadowed from the current folder. Each injects the fault and asserts the one outcome a user relies on.
"""

import json
import shutil
import sys
from pathlib import Path

import gin
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_task  # noqa: E402
from local_task_files import cli_flags  # noqa: E402

from prompt_tuning import cli, gin_config, infer, optim, train, validation  # noqa: E402
from prompt_tuning import eval as evaluation  # noqa: E402
from prompt_tuning.checkpoints import CheckpointError  # noqa: E402
from prompt_tuning.data import vocab  # noqa: E402
from prompt_tuning.methods import Prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("clean_gin")


def _main(capsys, *argv) -> tuple[int, str, str]:
  code = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _config(tmp_path, **overrides) -> train.RunConfig:
  settings = dict(
    model_dir=str(tmp_path / "run"),
    initial_checkpoint_path=str(tiny_task.T5X_TINY),
    model_size="t5_1_1_tiny",
    mixture_or_task_name=tiny_task.register(),
    task_feature_lengths={"inputs": 16, "targets": 4},
    prompt=Prompt(3, tiny_task.uniform_init),
    batch_size=8,
  )
  return train.RunConfig(**(settings | overrides))


# ---------------------------------------------------------------------------------------------------------------
# 12, 13, 14: prompt files, export and infer inputs.


def test_export_npy_reports_the_file_it_wrote(tmp_path, capsys):
  np.save(tmp_path / "prompt.npy", np.ones((4, 8), np.float32))
  code, out, _ = _main(capsys, "export", tmp_path / "prompt.npy", tmp_path / "noext", "--format", "npy")
  assert code == 0
  assert out.strip() == f"wrote npy prompt [4, 8] to {tmp_path / 'noext.npy'}"
  assert np.load(tmp_path / "noext.npy").shape == (4, 8) and not (tmp_path / "noext").exists()


def test_a_safetensors_file_named_npy_is_named_as_such_not_as_pickled(tmp_path, capsys):
  from safetensors.numpy import save_file

  save_file({"prompt": np.ones((4, 8), np.float32)}, str(tmp_path / "st_as.npy"))
  code, _, err = _main(capsys, "export", tmp_path / "st_as.npy", tmp_path / "o.npy", "--format", "npy")
  assert code == 1
  assert f"{tmp_path / 'st_as.npy'} is truncated or not a .npy file" in err
  assert "it is a safetensors file: rename it to end in .safetensors" in err and "pickled" not in err
  (tmp_path / "other.npy").write_bytes(b"PK\x03\x04 a zip, not an array")
  with pytest.raises(CheckpointError, match="not a .npy file .*save the prompt with numpy.save"):
    from prompt_tuning.checkpoints import prompt_files

    prompt_files.read_npy(tmp_path / "other.npy")


def test_a_non_utf8_infer_input_file_is_named_with_its_line(tmp_path):
  rows = tmp_path / "rows.jsonl"
  rows.write_bytes(b'\n\xff\xfe garbage\n{"inputs": "fine", "prompt": "a"}\n')
  with pytest.raises(ValueError, match=rf"{rows}:2: not a JSON line in UTF-8 \(UnicodeDecodeError.*save it as UTF-8"):
    infer._file_examples(str(rows), None, {"inputs": 16}, ["a"], None)


# ---------------------------------------------------------------------------------------------------------------
# 15, 16, 18, 19, 20: bad command-line input.


def test_an_unquoted_string_value_names_the_binding_and_the_quoting(tmp_path, capsys):
  code, _, err = _main(capsys, "train", "--gin_file=demo/prompt.gin", f"--gin.MODEL_DIR={tmp_path}/x")
  assert code == 1
  assert f"the binding --gin.MODEL_DIR={tmp_path}/x does not parse (Unable to parse value.)" in err
  assert f"""--gin.MODEL_DIR="'{tmp_path}/x'" (the shell removes the outer pair)""" in err
  assert "line 5" not in err and not (tmp_path / "x").exists()
  code, _, err = _main(capsys, "train", "--gin_file=demo/prompt.gin", "--gin.TRAIN_STEPS=[1,")
  assert code == 1 and "the binding --gin.TRAIN_STEPS=[1, does not parse" in err and "Python literal" in err


@pytest.mark.parametrize("command", ["evaluate", "infer"])
def test_a_split_typo_names_the_setting_and_the_splits(reference_dir, tmp_path, command):
  run = evaluation.evaluate if command == "evaluate" else infer.infer
  message = rf"{command}.split is 'validaton', which task '.*' does not have: its splits are \['train', 'validation'\]"
  with pytest.raises(validation.SettingError, match=message + r"\. Did you mean 'validation'\?"):
    run(run_config=_config(tmp_path), split="validaton")
  assert not (tmp_path / "run").exists()  # refused before anything was built or written


@pytest.mark.parametrize("command", ["evaluate", "infer"])
def test_zero_examples_is_refused(reference_dir, tmp_path, command):
  run = evaluation.evaluate if command == "evaluate" else infer.infer
  with pytest.raises(validation.SettingError, match=rf"{command}.num_examples is 0: that reads no example"):
    run(run_config=_config(tmp_path), num_examples=0)
  assert not (tmp_path / "run").exists()
  validation.check_num_examples(-1, "infer.num_examples")  # tf.data's "every example"
  validation.check_num_examples(None, "infer.num_examples")


@pytest.mark.parametrize("rate, says", [(-1.0, "a negative rate climbs the loss"), (float("nan"), "a finite number")])
def test_a_negative_or_nan_learning_rate_is_refused(rate, says):
  with pytest.raises(validation.SettingError, match=f"adafactor.learning_rate .*{says}"):
    optim.adafactor(learning_rate=rate)
  optim.adafactor(learning_rate=0.3)
  optim.adafactor(learning_rate=lambda step: 0.3)  # schedules are not judged


def test_no_vocabulary_advice_names_vocabulary_path(monkeypatch):
  monkeypatch.delenv(vocab.ENV_VARIABLE, raising=False)
  monkeypatch.setattr(vocab, "_override_path", None)
  with pytest.raises(Exception, match="for train, eval and infer set VOCABULARY_PATH") as error:
    vocab.resolve_vocabulary_path(None)
  assert """--gin.VOCABULARY_PATH="'/path/to/sentencepiece.model'\"""" in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# 17: a resume on another TRAIN_FILE under the same task name.


def test_resuming_on_another_train_file_under_the_same_task_name_is_refused(reference_dir, tmp_path, capsys):
  flags = cli_flags(reference_dir, tmp_path / "task", "faults_train_file")
  train_file = tmp_path / "task" / "train.jsonl"
  model_dir = f"--gin.MODEL_DIR='{tmp_path / 'run'}'"
  common = [*flags, model_dir, "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_EVERY=0"]
  code, _, err = _main(capsys, "train", *common, "--gin.TRAIN_STEPS=2")
  assert code == 0, err
  meta_files = list((tmp_path / "run" / "checkpoints" / "2").rglob("*"))
  assert any("sha256" in f.read_text(errors="ignore") for f in meta_files if f.is_file() and f.stat().st_size < 10000)

  other = tmp_path / "other.jsonl"
  rows = [json.loads(line) for line in train_file.read_text().splitlines()]
  other.write_text("".join(json.dumps(row | {"question": row["question"] + "!"}) + "\n" for row in rows))
  changed = [a if not a.startswith("--gin.TRAIN_FILE=") else f"--gin.TRAIN_FILE='{other}'" for a in common]
  code, _, err = _main(capsys, "train", *changed, "--gin.TRAIN_STEPS=4")
  assert code == 1
  assert "was trained on local task 'faults_train_file' with TRAIN_FILE" in err and "holds other data" in err
  assert not (tmp_path / "run" / "checkpoints" / "4").exists()

  # The same rows under another path (a moved data folder) are the same data: the run goes on.
  moved = tmp_path / "moved.jsonl"
  shutil.copy(train_file, moved)
  same = [a if not a.startswith("--gin.TRAIN_FILE=") else f"--gin.TRAIN_FILE='{moved}'" for a in common]
  code, _, err = _main(capsys, "train", *same, "--gin.TRAIN_STEPS=4")
  assert code == 0, err
  assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


# ---------------------------------------------------------------------------------------------------------------
# 24: a gin `include` is read from the library before the current folder.


def test_an_include_is_not_shadowed_by_the_current_folder(tmp_path, monkeypatch, caplog):
  (tmp_path / "models" / "sizes").mkdir(parents=True)
  shadow = (ROOT / "gin" / "models" / "sizes" / "demo.gin").read_text() + "\nTRAIN_STEPS = 3\n"
  (tmp_path / "models" / "sizes" / "demo.gin").write_text(shadow)
  monkeypatch.chdir(tmp_path)
  gin_config.configure_gin(["demo/prompt.gin"], ["MODEL_DIR = '/tmp/unused'"], [])
  assert gin.query_parameter("%TRAIN_STEPS") != 3
  assert "gin include models/sizes/demo.gin: using" in caplog.text
  assert "not ./models/sizes/demo.gin of the current folder" in caplog.text
  # A file only the current folder has is still found there.
  gin.clear_config()
  (tmp_path / "mine.gin").write_text("include 'extra.gin'\n")
  (tmp_path / "extra.gin").write_text("TRAIN_STEPS = 5\n")
  gin_config.configure_gin(["demo/prompt.gin", "./mine.gin"], ["MODEL_DIR = '/tmp/unused'"], [])
  assert gin.query_parameter("%TRAIN_STEPS") == 5


def test_infer_prompt_files_are_read_and_checked_by_the_prompt_method(tmp_path):
  """infer.prompt_files go through Prompt.read_file and Prompt.check, as an upload to the server does: a prompt for
  another model size is refused naming its entry; an old run's numpy_checkpoints step folder is read."""
  from prompt_tuning.methods import PromptError
  from prompt_tuning.models.configs import get_config

  config = get_config("t5_1_1_tiny")
  np.save(tmp_path / "wide.npy", np.ones((3, config.emb_dim + 1), np.float32))
  step = tmp_path / "old_run" / "numpy_checkpoints" / "checkpoint_4"
  step.mkdir(parents=True)
  np.save(step / "prompt.npy", np.full((2, config.emb_dim), 0.5, np.float32))
  with pytest.raises(PromptError, match=r"infer.prompt_files\['wide'\]: 'prompt' has width 5 but this backbone .* 4"):
    infer._load_prompts({"wide": str(tmp_path / "wide.npy")}, config)
  loaded = infer._load_prompts([str(tmp_path / "old_run")], config)
  np.testing.assert_array_equal(loaded["0"], np.full((2, config.emb_dim), 0.5, np.float32))
