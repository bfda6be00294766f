"""The fault suite of issue #13: each bad input a hostile but fair user tried, the one error it must give, and, where
a checkpoint is involved, that the previous good checkpoint still restores.

Rows of the issue's table, in order: bad command-line input (refused before the backbone loads), corrupt training
checkpoints (skipped to the newest intact one, never deleted), corrupt prompt files and PEFT adapters, corrupt or
wrong SentencePiece models, two trainings on one MODEL_DIR, 1 device vs 8 (dropout masks), and the security and
housekeeping findings (paths outside their folder, gin files shadowed from the current folder, unsafe-loading
advice, numpy_checkpoints/ pruning, metrics.jsonl after a resume).
"""

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simulated_devices
import tiny_task

from prompt_tuning import cli, gin_config, locks, prompts, train, validation
from prompt_tuning.checkpoints import CheckpointError, huggingface
from prompt_tuning.data import errors as data_errors
from prompt_tuning.methods import Prompt

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("clean_gin")


def _config(model_dir, **overrides) -> train.RunConfig:
  return tiny_task.run_config(model_dir, **{"keep_checkpoints": 2, **overrides})  # conftest.trained_run's settings


def _main(capsys, *argv) -> tuple[int, str]:
  code = cli.main(list(argv))
  return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(trained_run):
  """The shared finished 4-step run (conftest.trained_run): checkpoints 3 and 4 kept (keep_checkpoints 2), a
  checkpoint every step. Read-only: the tests that resume or damage it work on `trained.copy(tmp_path)`."""
  return trained_run


# ---------------------------------------------------------------------------------------------------------------
# Bad command-line input: refused before the backbone loads, one line naming the setting.


@pytest.fixture(scope="module")
def cli_flags(reference_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("data")
  for split, count in (("train", 16), ("validation", 4)):
    with open(folder / f"{split}.jsonl", "w") as f:
      for i in range(count):
        f.write(json.dumps({"question": f"is {i} odd?", "answer": "yes" if i % 2 else "no"}) + "\n")
  return [
    "--gin_file=test/prompt_tiny.gin",
    "--gin_file=tasks/local_files.gin",
    # A backbone path that does not exist: any error about it would mean a setting was checked too late.
    f"--gin.INITIAL_CHECKPOINT_PATH='{folder / 'no_backbone_here'}'",
    f"--gin.VOCABULARY_PATH='{reference_dir / 't5_spm_32000.model'}'",
    "--gin.LOCAL_TASK_NAME='faults_yes_no'",
    f"--gin.TRAIN_FILE='{folder / 'train.jsonl'}'",
    f"--gin.VALIDATION_FILE='{folder / 'validation.jsonl'}'",
    "--gin.INPUT_TEMPLATE='question: {question}'",
    "--gin.TARGET_COLUMN='answer'",
    f"--gin.MODEL_DIR='{folder / 'run'}'",
  ]


@pytest.mark.parametrize(
  "binding, message",
  [
    ("BATCH_SIZE='abc'", "BATCH_SIZE must be an integer >= 1, got 'abc'"),
    ("BATCH_SIZE=0", "BATCH_SIZE must be an integer >= 1, got 0"),
    ("TRAIN_STEPS=0", "TRAIN_STEPS (train.num_train_steps) must be an integer >= 1, got 0"),
    ("TRAIN_STEPS=-5", "TRAIN_STEPS (train.num_train_steps) must be an integer >= 1, got -5"),
    ("TRAIN_STEPS=10.5", "TRAIN_STEPS (train.num_train_steps) must be an integer >= 1, got 10.5"),
    ("CHECKPOINT_EVERY=-1", "CHECKPOINT_EVERY (train.checkpoint_every) must be an integer >= 1, got -1"),
    ("CHECKPOINT_EVERY=0", "CHECKPOINT_EVERY (train.checkpoint_every) must be an integer >= 1, got 0"),
    ("TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 4}", "TASK_FEATURE_LENGTHS['inputs'] must be an integer >= 1"),
    ("DROPOUT_RATE=1.0", "DROPOUT_RATE must be a number in [0, 1)"),
    ("PROMPT_LENGTH=200000", "prompt length 200000 + input 16 = 200016 encoder positions"),
    ("PROMPT_LENGTH=-1", "PROMPT_LENGTH must be an integer >= 0, got -1"),
    ("NUM_MICROBATCHES=3", "BATCH_SIZE 8 must be a multiple of NUM_MICROBATCHES 3"),
    ("TRAINABLE_PATTERN='(prompt'", "TRAINABLE_PATTERN '(prompt' is not a valid regular expression"),
    ("MODEL_DIR='s3://bucket/run'", "MODEL_DIR s3://bucket/run is a URL this project does not write to"),
  ],
)
def test_bad_settings_are_refused_before_the_backbone_loads(cli_flags, capsys, binding, message):
  code, err = _main(capsys, "train", *cli_flags, f"--gin.{binding}")
  assert code == 1
  assert message in err
  assert "Traceback" not in err and "no_backbone_here" not in err
  assert err.startswith("error: SettingError: ") and err.count("\n") == 1  # one line, gin's context dropped


def test_an_unknown_task_is_refused_before_the_backbone_loads(cli_flags, capsys):
  code, err = _main(capsys, "train", *cli_flags, "--gin.MIXTURE_OR_TASK_NAME='faults_yes_n'")
  assert code == 1 and "faults_yes_n" in err and "faults_yes_no" in err and "no_backbone_here" not in err


def test_the_cli_prints_every_line_of_our_message_and_no_traceback(capsys, reference_dir):
  backbone = reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3"
  prompt = reference_dir / "prompt_5x256.npy"
  code, err = _main(capsys, "inspect", str(prompt), "--checkpoint", str(backbone), "--size", "t5_1_1_small")
  assert code == 1 and "Traceback" not in err
  # The lines after the first: which parameters differ, and what to do.
  assert "emb_dim: 512 in the named size 't5_1_1_small', 4 in the checkpoint" in err
  assert "Pass config='t5_1_1_tiny'" in err


def test_tensorflow_wrapping_is_removed_down_to_the_cause():
  import tensorflow as tf

  def raises(_):
    raise ValueError("/data/x.jsonl, line 3: our message\nwhat to do")

  with pytest.raises(ValueError) as info:
    tf.data.Dataset.range(1).map(raises)
  assert str(info.value).startswith("in user code:")
  assert cli.error_message(info.value) == "error: ValueError: /data/x.jsonl, line 3: our message\nwhat to do"


def test_a_gin_file_with_a_syntax_error_is_named(capsys, tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("PROMPT_LENGTH = (3\n")
  code, err = _main(capsys, "train", f"--gin_file={bad}")
  assert code == 1 and str(bad) in err and "Traceback" not in err


def test_eval_without_a_checkpoint_is_refused(tmp_path):
  from prompt_tuning import eval as evaluation

  with pytest.raises(validation.SettingError, match="holds no training checkpoint"):
    evaluation.evaluate(run_config=_config(tmp_path / "empty"))


def test_an_unwritable_model_dir_is_refused_before_training():
  # /proc/self exists and refuses new files even to root (permission bits would not stop root).
  with pytest.raises(validation.SettingError, match="/proc/self is not writable"):
    validation.check_writable("/proc/self")


def test_non_utf8_jsonl_names_the_file_and_line(tmp_path):
  from prompt_tuning.data import local_tasks

  path = tmp_path / "train.jsonl"
  path.write_bytes(b'{"q": "a", "a": "b"}\n{"q": "caf\xe9", "a": "b"}\n')
  with pytest.raises(data_errors.LocalDataError, match=r"train.jsonl, after line 1: not UTF-8"):
    list(local_tasks.read_rows(str(path), "jsonl"))


def test_a_task_whose_targets_are_all_empty_is_refused(tmp_path):
  from prompt_tuning.data import register_local_task

  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps({"q": f"q{i}", "a": ""}) + "\n" for i in range(4)))
  with pytest.raises(data_errors.LocalDataError, match="every target .* is empty"):
    register_local_task("faults_empty_targets", train=str(path), input_template="{q}", target_column="a")


# ---------------------------------------------------------------------------------------------------------------
# Resuming: the settings recorded with a checkpoint, and TRAIN_STEPS below the step reached.


def test_train_steps_below_the_resumed_step_is_refused(trained, tmp_path):
  model_dir = trained.copy(tmp_path)
  with pytest.raises(validation.SettingError, match="checkpoint at step 4, past TRAIN_STEPS 3"):
    train.train(_config(model_dir), num_train_steps=3, checkpoint_every=1)


def test_resume_with_another_task_or_batch_is_refused(trained, tmp_path):
  model_dir = trained.copy(tmp_path)
  other = _config(model_dir, mixture_or_task_name=tiny_task.register(class_labels=True))
  with pytest.raises(CheckpointError, match="trained with MIXTURE_OR_TASK_NAME = 'tiny_yes_no'"):
    train.train(other, num_train_steps=6)
  with pytest.raises(CheckpointError, match="trained with BATCH_SIZE = 8; this run sets 4"):
    train.train(_config(model_dir, batch_size=4), num_train_steps=6)


# ---------------------------------------------------------------------------------------------------------------
# Corrupt training checkpoints: the newest intact one is restored, the damaged one moved aside, not deleted.


def _truncate_arrays(step_dir: Path) -> None:
  for file in (step_dir / "state" / "d").iterdir():
    file.write_bytes(file.read_bytes()[:7])


def _garbage_meta(step_dir: Path) -> None:
  (step_dir / "meta" / "metadata").write_bytes(b"\x00\x01not json")


def _no_tree_metadata(step_dir: Path) -> None:
  (step_dir / "state" / "_METADATA").unlink()


def _no_manifest(step_dir: Path) -> None:
  (step_dir / "state" / "manifest.ocdbt").unlink()


def _empty_state(step_dir: Path) -> None:
  shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("damage", [_truncate_arrays, _garbage_meta, _no_tree_metadata, _no_manifest, _empty_state])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, caplog, monkeypatch, damage):
  model_dir = trained.copy(tmp_path)
  damage(model_dir / "checkpoints" / "4")
  unraisable = []  # what would print as tracebacks ("Event loop is closed" from the failed read's leftovers)
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  run = train.build(_config(model_dir))
  gc.collect()
  assert not unraisable, [repr(u.exc_value) for u in unraisable]
  try:
    assert run.start_step == 3
    expected = np.load(model_dir / "numpy_checkpoints" / "checkpoint_3" / "prompt.npy")
    np.testing.assert_array_equal(np.asarray(run.state.trainable["prompt"]), expected)
  finally:
    run.checkpoints.close()
  assert "skipped damaged training checkpoint 4" in caplog.text
  assert (model_dir / "damaged_checkpoints" / "4").is_dir()  # kept for inspection, not deleted
  assert not (model_dir / "checkpoints" / "4").exists()


def test_training_resumes_past_a_damaged_checkpoint(trained, tmp_path):
  model_dir = trained.copy(tmp_path)
  _truncate_arrays(model_dir / "checkpoints" / "4")
  train.train(_config(model_dir), num_train_steps=5, checkpoint_every=1, log_every=1)
  assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 5]
  assert (model_dir / "damaged_checkpoints" / "4").is_dir()


def test_a_mismatched_checkpoint_is_refused_not_skipped(trained, tmp_path):
  model_dir = trained.copy(tmp_path)
  with pytest.raises(CheckpointError, match=r"trainable.prompt: saved \(3, 4\), this run \(5, 4\)"):
    train.build(_config(model_dir, prompt=Prompt(5, tiny_task.uniform_init)))
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "4"]
  assert not (model_dir / "damaged_checkpoints").exists()


# ---------------------------------------------------------------------------------------------------------------
# Housekeeping: numpy prompts pruned with the checkpoints, metrics.jsonl without repeats after a resume.


def test_numpy_prompts_are_pruned_with_the_checkpoints(trained):
  orbax = sorted(p.name for p in (trained.model_dir / "checkpoints").iterdir() if p.name.isdigit())
  numpy = sorted(p.name for p in (trained.model_dir / "numpy_checkpoints").iterdir())
  assert orbax == ["3", "4"] and numpy == ["checkpoint_3", "checkpoint_4"]


def test_metrics_have_no_repeated_steps_after_a_resume(trained, tmp_path):
  model_dir = trained.copy(tmp_path)
  # As after a kill between the metrics of step 4 and its checkpoint: the run resumes at 3 and redoes 4.
  shutil.rmtree(model_dir / "checkpoints" / "4")
  train.train(_config(model_dir), num_train_steps=5, checkpoint_every=1, log_every=1)
  steps = [json.loads(line)["step"] for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------------------------
# Corrupt prompt files and PEFT adapters: our error, naming the file, never the advice to load unsafely.


def _write_adapter(folder: Path, config) -> Path:
  from prompt_tuning.checkpoints import peft

  peft.export_peft_adapter(np.ones((3, 4), np.float32), folder)
  (folder / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
  return folder


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda d: (d / "p.npy").write_bytes(b""), "p.npy is truncated or not a .npy file"),
    (lambda d: (d / "p.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"), "p.npy is not a readable .npy array"),
    (lambda d: np.save(d / "p.npy", np.array([{"a": 1}], dtype=object)), "p.npy holds pickled Python objects"),
    (lambda d: (d / "p.safetensors").write_bytes(b"\x10\x00"), "p.safetensors is truncated or not a safetensors"),
    (lambda d: _write_adapter(d / "p", "{not json"), "adapter_config.json is not valid JSON"),
    (lambda d: _write_adapter(d / "p", ["a list"]), "adapter_config.json holds a JSON list"),
    (
      lambda d: _write_adapter(d / "p", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": None, "token_dim": 4}),
      "num_virtual_tokens is None",
    ),
  ],
)
def test_corrupt_prompt_files_name_the_file(tmp_path, make, message):
  make(tmp_path)
  path = next(p for p in tmp_path.iterdir() if p.name.startswith("p"))
  with pytest.raises(CheckpointError, match=message.replace(".", r"\.").replace("(", r"\(")):
    prompts.load_prompt_file(path)


def test_a_pickled_prompt_is_refused_without_unsafe_advice(tmp_path, capsys):
  np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object))
  code, err = _main(capsys, "export", str(tmp_path / "p.npy"), str(tmp_path / "out.npy"), "--format", "npy")
  assert code == 1 and "holds pickled Python objects" in err and str(tmp_path / "p.npy") in err
  assert "allow_pickle" not in err and "unsafe" not in err


def test_a_hf_index_naming_a_file_outside_its_folder_is_refused(tmp_path):
  from safetensors.numpy import save_file

  folder = tmp_path / "checkpoint"
  folder.mkdir()
  save_file({"shared.weight": np.ones((2, 2), np.float32)}, str(tmp_path / "elsewhere.safetensors"))
  (folder / "model.safetensors.index.json").write_text(
    json.dumps({"weight_map": {"shared.weight": "../elsewhere.safetensors"}})
  )
  with pytest.raises(CheckpointError, match=r"names '\.\./elsewhere\.safetensors', which resolves to .* outside"):
    huggingface.read_weights(str(folder))


# ---------------------------------------------------------------------------------------------------------------
# Corrupt or wrong SentencePiece models.


def test_a_corrupt_sentencepiece_model_is_named(cli_flags, capsys, tmp_path):
  bad = tmp_path / "spm.model"
  bad.write_bytes(b"\x0a\xff\xff\xff garbage, not a model")
  code, err = _main(capsys, "train", *cli_flags, f"--gin.VOCABULARY_PATH='{bad}'")
  assert code == 1 and f"{bad} is not a SentencePiece model" in err
  assert "in user code" not in err and "no_backbone_here" not in err


def test_a_vocabulary_larger_than_the_embedding_is_refused(reference_dir):
  task = validation.check_task(tiny_task.register())
  with pytest.raises(validation.SettingError, match="has 32,100 ids .* embeds only 8,000 tokens"):
    validation.check_vocabulary(task, 8000)
  validation.check_vocabulary(task, 32128)  # T5's embedding: fits


def test_a_vocabulary_much_smaller_than_the_embedding_is_warned_about(reference_dir, caplog):
  task = validation.check_task(tiny_task.register())
  validation.check_vocabulary(task, 250112)  # mT5's embedding with T5's vocabulary
  assert "has 32,100 ids but the backbone embeds 250,112 tokens" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Gin files: the project's library first; the current folder only by an explicit path.


def test_a_gin_file_in_the_current_folder_does_not_shadow_the_library(tmp_path, monkeypatch, caplog):
  (tmp_path / "test").mkdir()
  (tmp_path / "test" / "prompt_tiny.gin").write_text("PROMPT_LENGTH = 7\n")
  monkeypatch.chdir(tmp_path)
  library = gin_config.resolve_gin_file("test/prompt_tiny.gin", [])
  assert library == str(ROOT / "configs" / "test" / "prompt_tiny.gin")
  assert "not ./test/prompt_tiny.gin of the current folder" in caplog.text
  assert gin_config.resolve_gin_file("./test/prompt_tiny.gin", []) == str(tmp_path / "test" / "prompt_tiny.gin")


# ---------------------------------------------------------------------------------------------------------------
# One writer per MODEL_DIR.


def test_a_second_training_on_a_locked_model_dir_is_refused(trained, tmp_path):
  model_dir = trained.copy(tmp_path)
  with locks.DirectoryLock(model_dir, what="training run"):
    with pytest.raises(locks.FolderInUseError, match=rf"in use by PID {os.getpid()} on .*kill {os.getpid()}"):
      train.train(_config(model_dir), num_train_steps=6)
  assert not (model_dir / "checkpoints" / "5").exists()


_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from prompt_tuning import locks
lock = locks.DirectoryLock(sys.argv[1], what="sweep").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLD.format(root=str(ROOT)), str(tmp_path)], stdout=subprocess.PIPE, text=True
  )
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(locks.FolderInUseError, match=rf"PID {proc.pid} .*\(sweep, started"):
      locks.DirectoryLock(tmp_path).acquire()
  finally:
    proc.kill()
    proc.wait()
  lock = locks.DirectoryLock(tmp_path).acquire()
  try:
    assert lock.stale_holder["pid"] == proc.pid
    assert f"took over the stale lock of PID {proc.pid}" in caplog.text
  finally:
    lock.release()
  assert (tmp_path / locks.LOCK_NAME).read_text() == ""  # released cleanly: no holder recorded


# ---------------------------------------------------------------------------------------------------------------
# 1 device vs 8: dropout masks do not depend on the mesh.

_MASKS = """
import sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P
from prompt_tuning import partitioning
assert len(jax.devices()) == 8 and jax.config.jax_threefry_partitionable
ones = jnp.ones((8, 4, 16, 16))
drop = lambda x, key: nn.Dropout(0.1).apply({{}}, x, deterministic=False, rngs={{"dropout": key}})
for shape, spec in (((8, 1), P("data")), ((4, 2), P("data", "model"))):
  mesh = partitioning.make_mesh(mesh_shape=shape)
  for step in range(5):
    key = jax.random.fold_in(jax.random.key(1), step)
    one = np.asarray(jax.jit(drop)(ones, key)) == 0
    sharded = jax.device_put(ones, NamedSharding(mesh, spec))
    many = np.asarray(jax.jit(drop, in_shardings=(NamedSharding(mesh, spec), None))(sharded, key)) == 0
    assert np.array_equal(one, many), (shape, step)
print("equal")
"""


def test_dropout_masks_do_not_depend_on_the_mesh():
  env = dict(os.environ, XLA_FLAGS=simulated_devices.xla_flags(8), TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run(
    [sys.executable, "-c", _MASKS.format(root=str(ROOT))], capture_output=True, text=True, env=env, timeout=300
  )
  assert done.returncode == 0 and done.stdout.strip() == "equal", done.stderr[-3000:]


def test_a_float64_prompt_beyond_float32s_range_is_refused_not_turned_into_inf(tmp_path):
  # A reference run's prompts are float64 .npy files; 1e39 is finite there and inf once cast to float32.
  path = tmp_path / "encoder.prompt.prompt.prompt"
  with open(path, "wb") as f:
    np.save(f, np.array([[0.5, 1e39], [0.1, -0.2]], np.float64))
  with pytest.raises(ValueError, match=r"values up to 1e\+39, beyond float32's range") as error:
    prompts.load_prompt_file(path)
  assert str(path) in str(error.value)
