"""Fault probes of 2026-12-06 (issue #31, item 4) on a run's own files: training checkpoints, numpy exports,
metrics.jsonl, write failures, the MODEL_DIR lock and `~` in MODEL_DIR. Each test injects one probe's fault (the
probe's number in ../shared/faults/probes-2026-12-06.md is in its comment) and checks the outcome a user relies on:
our error naming the file and what to do, a fallback to what is intact, or a refusal.

The trained run is test_faults.py's (4 steps, checkpoints 3 and 4 kept), copied per test; commands run in process,
except where the process itself is what is tested (a failed save must end it: orbax's threads would keep it alive).
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_task

from prompt_tuning import locks, run, train, validation
from prompt_tuning.checkpoints import CheckpointError
from prompt_tuning.checkpoints import training as training_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def _config(model_dir, **overrides) -> train.RunConfig:
  """The tiny run's RunConfig (tiny_task.run_config), keeping its 2 newest checkpoints."""
  return tiny_task.run_config(model_dir, **{"keep_checkpoints": 2, **overrides})


def _copy(trained, tmp_path) -> Path:
  """A copy of a trained MODEL_DIR, without its lock."""
  target = tmp_path / "run"
  shutil.copytree(trained, target)
  (target / locks.LOCK_NAME).unlink(missing_ok=True)
  return target


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, reference_dir):
  """A finished 4-step run: checkpoints 3 and 4 kept (keep_checkpoints 2), a checkpoint every step."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  train.train(_config(model_dir), num_train_steps=4, checkpoint_every=1, log_every=1)
  return model_dir


def _steps(model_dir: Path) -> list[int]:
  return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit() and p.is_dir())


# ---------------------------------------------------------------------------------------------------------------
# Training checkpoints (probes 1-4, 23).


def _other_values(step_dir: Path) -> None:
  """Gives a checkpoint the arrays of the step before it, meta unchanged: files that read back whole, values that
  are not the ones written (what a bit flipped on disk does, where no decoder notices; probe 2 flipped bytes of an
  OCDBT data file). Deterministic, unlike a flip, which may also break the file's framing."""
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / str(int(step_dir.name) - 1) / "state", step_dir / "state")


def test_a_checkpoint_whose_arrays_changed_fails_its_checksum_and_the_previous_step_is_restored(
  trained, tmp_path, caplog
):
  # Probe 2: the flipped step was restored silently, then "loss is nan ... last good checkpoint (step 8)".
  model_dir = _copy(trained, tmp_path)
  _other_values(model_dir / "checkpoints" / "4")
  build = train.build(_config(model_dir))
  try:
    assert build.start_step == 3
    expected = np.load(model_dir / "numpy_checkpoints" / "checkpoint_3" / "prompt.npy")
    np.testing.assert_array_equal(np.asarray(build.state.trainable["prompt"]), expected)
  finally:
    build.checkpoints.close()
  assert "skipped damaged training checkpoint 4" in caplog.text
  assert "do not match the checksum written with them" in caplog.text
  assert (model_dir / "damaged_checkpoints" / "4").is_dir()


def test_the_checksum_sees_one_flipped_bit_and_is_written_with_every_checkpoint(trained):
  import jax

  meta = json.loads((trained / "checkpoints" / "4" / "meta" / "metadata").read_text())
  assert meta["checksum_version"] == training_checkpoints.CHECKSUM_VERSION
  state = {"prompt": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "step": np.int32(4)}
  flipped = dict(state, prompt=state["prompt"].copy())
  flipped["prompt"].view(np.uint32)[1, 2] ^= 1  # the lowest mantissa bit of one value
  moved = dict(state, prompt=state["prompt"][::-1].copy())
  checksums = {training_checkpoints.state_checksum(jax.device_put(s)) for s in (state, flipped, moved)}
  assert len(checksums) == 3


def test_a_checkpoint_written_before_checksums_were_recorded_still_restores(trained, tmp_path):
  model_dir = _copy(trained, tmp_path)
  meta_file = model_dir / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["state_checksum"], meta["checksum_version"]
  meta_file.write_text(json.dumps(meta))
  build = train.build(_config(model_dir))
  build.checkpoints.close()
  assert build.start_step == 4


def test_a_rerun_after_every_checkpoint_was_damaged_is_refused_not_restarted(trained, tmp_path):
  # Probe 3: the second identical command trained from step 0 and overwrote numpy_checkpoints/.
  model_dir = _copy(trained, tmp_path)
  for step in (3, 4):
    (model_dir / "checkpoints" / str(step) / "meta" / "metadata").write_bytes(b"\x00not json")
  exports = {p: p.read_bytes() for p in (model_dir / "numpy_checkpoints").rglob("*.npy")}
  with pytest.raises(CheckpointError, match="every training checkpoint .* is damaged"):
    train.train(_config(model_dir), num_train_steps=6)
  with pytest.raises(
    validation.SettingError, match=r"no intact training checkpoint left.*delete .*damaged_checkpoints"
  ):
    train.train(_config(model_dir), num_train_steps=6)
  assert {p: p.read_bytes() for p in (model_dir / "numpy_checkpoints").rglob("*.npy")} == exports


def test_a_stray_file_named_like_a_step_is_not_a_checkpoint(trained, tmp_path, caplog):
  # Probe 4: "holds a checkpoint at step 10, past TRAIN_STEPS 8" about a one-line text file.
  model_dir = _copy(trained, tmp_path)
  (model_dir / "checkpoints" / "10").write_text("x\n")
  with caplog.at_level(logging.WARNING):
    train.train(_config(model_dir), num_train_steps=5, checkpoint_every=1, log_every=1)
  assert "checkpoints/10 is a file, not a checkpoint folder" in caplog.text
  assert _steps(model_dir) == [4, 5]
  assert (model_dir / "checkpoints" / "10").read_text() == "x\n"


def test_a_symlinked_checkpoint_step_is_refused_up_front_naming_the_link(trained, tmp_path):
  # Probe 23: orbax's pruning ended the run with "Cannot call rmtree on a symbolic link", naming no path.
  model_dir = _copy(trained, tmp_path)
  outside = tmp_path / "outside_3"
  (model_dir / "checkpoints" / "3").rename(outside)
  (model_dir / "checkpoints" / "3").symlink_to(outside)
  with pytest.raises(validation.SettingError, match=rf"checkpoints/3 is a symbolic link \(to {outside}\)"):
    train.train(_config(model_dir), num_train_steps=6, checkpoint_every=1)
  assert (outside / "state").is_dir()  # nothing outside MODEL_DIR touched
  assert _steps(model_dir) == [3, 4]


def test_a_file_where_the_checkpoints_folder_belongs_is_refused_up_front(tmp_path):
  # Probe 1's set-up: MODEL_DIR/checkpoints is a file. Refused before the backbone loads.
  (tmp_path / "checkpoints").write_text("x\n")
  with pytest.raises(validation.SettingError, match=r"checkpoints is a file, where the run keeps a folder"):
    train.train(_config(tmp_path), num_train_steps=2)


# ---------------------------------------------------------------------------------------------------------------
# A checkpoint that cannot be written (probes 1, 9): the process ends within seconds with one error line, and
# leaves no temporary files. A real process: orbax's background threads, which waited forever, are the fault.


def _orbax_cannot_make_its_folder(model_dir: Path) -> list[str]:
  # orbax makes step 2's temporary folder in a background thread; a dangling link in its place makes that fail,
  # and the threads waiting for it then kept the process alive forever (probe 1 made checkpoints/ a file, which
  # is now refused up front).
  (model_dir / "checkpoints").mkdir(parents=True)
  (model_dir / "checkpoints" / "2.orbax-checkpoint-tmp").symlink_to(model_dir / "nowhere")
  return []


def _small_file_size_limit(model_dir: Path) -> list[str]:
  # A stand-in for a full disk (probe 9's `ulimit -f`): writes past 4 KiB fail with EFBIG; the checkpoint's
  # metadata is 6.6 KiB, everything written before it smaller.
  limit = "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
  limit += "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
  return ["-c", limit + "import runpy; runpy.run_module('prompt_tuning.cli', run_name='__main__')"]


@pytest.fixture(scope="module")
def cli_train_flags(reference_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("data")
  for split, count in (("train", 16), ("validation", 4)):
    rows = [{"question": f"is {i} odd?", "answer": "yes" if i % 2 else "no"} for i in range(count)]
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
  return [
    "--gin_file=test/prompt_tiny.gin",
    "--gin_file=tasks/local_files.gin",
    f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_task.T5X_TINY}'",
    f"--gin.VOCABULARY_PATH='{reference_dir / 't5_spm_32000.model'}'",
    "--gin.LOCAL_TASK_NAME='faults_writes'",
    f"--gin.TRAIN_FILE='{folder / 'train.jsonl'}'",
    f"--gin.VALIDATION_FILE='{folder / 'validation.jsonl'}'",
    "--gin.INPUT_TEMPLATE='question: {question}'",
    "--gin.TARGET_COLUMN='answer'",
  ]


@pytest.mark.parametrize(
  "fault, advice",
  [
    (_orbax_cannot_make_its_folder, "A file stands where a checkpoint folder should be"),
    (_small_file_size_limit, "The disk is full"),
  ],
  ids=["orbax_folder_not_made", "file_size_limit"],
)
def test_a_failed_checkpoint_write_ends_the_process_with_one_error_and_no_leftovers(
  cli_train_flags, tmp_path, fault, advice
):
  model_dir = tmp_path / "run"
  program = fault(model_dir) or ["-m", "prompt_tuning.cli"]
  env = dict(os.environ, PYTHONPATH=str(ROOT), PROMPT_TUNING_COMPILATION_CACHE="off", TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, *program, "train", *cli_train_flags, f"--gin.MODEL_DIR='{model_dir}'"]
  start = time.monotonic()
  done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
  seconds = time.monotonic() - start
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 1, done.stderr[-3000:]
  assert len(errors) == 1 and "CheckpointWriteError" in errors[0], done.stderr[-3000:]
  assert str(model_dir / "checkpoints") in errors[0]
  assert advice in done.stderr
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  assert not [p for p in model_dir.rglob("*") if "tmp" in p.name]
  assert seconds < 300  # it hung until killed before (timeout 150 s in the probe)


# ---------------------------------------------------------------------------------------------------------------
# numpy exports (probes 5, 6): eval and infer read the training checkpoint when the export is damaged or does not fit.


def test_a_truncated_export_falls_back_to_the_training_checkpoint(trained, tmp_path, caplog):
  # Probe 5: "prompt.npy is not a readable .npy array ... it is corrupt", though step 4's checkpoint is intact.
  model_dir = _copy(trained, tmp_path)
  export = model_dir / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy"
  expected = np.load(export)
  export.write_bytes(export.read_bytes()[:100])
  inference = run.build_inference(_config(model_dir))
  assert inference.source == "the training checkpoint" and inference.step == 4
  np.testing.assert_array_equal(np.asarray(inference.trainable["prompt"]), expected)
  assert f"the exports in {export.parent} cannot be used" in caplog.text
  assert "reading training checkpoint 4 instead" in caplog.text


def test_an_export_of_another_prompt_length_is_not_used(trained, tmp_path, caplog):
  # Probe 6: a 5-vector prompt.npy was scored silently with PROMPT_LENGTH 3 (here).
  model_dir = _copy(trained, tmp_path)
  export = model_dir / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy"
  expected = np.load(export)
  np.save(export, np.ones((5, expected.shape[1]), np.float32))
  inference = run.build_inference(_config(model_dir))
  np.testing.assert_array_equal(np.asarray(inference.trainable["prompt"]), expected)
  assert f"(5, {expected.shape[1]}), expected {expected.shape}" in caplog.text


def test_an_intact_export_is_read_without_the_training_checkpoint(trained, tmp_path):
  model_dir = _copy(trained, tmp_path)
  inference = run.build_inference(_config(model_dir))
  assert inference.source.startswith("the exports of step 4")


# ---------------------------------------------------------------------------------------------------------------
# metrics.jsonl (probes 7, 8).


def test_non_utf8_bytes_in_metrics_do_not_block_the_resume_and_the_file_is_named(trained, tmp_path, caplog):
  # Probe 7: "UnicodeDecodeError: 'utf-8' codec can't decode byte 0x89", naming no file.
  model_dir = _copy(trained, tmp_path)
  metrics = model_dir / "metrics.jsonl"
  garbage = b"\x89PNG\xff\xfe binary\n"
  metrics.write_bytes(metrics.read_bytes() + garbage)
  train.train(_config(model_dir), num_train_steps=5, checkpoint_every=1, log_every=1)
  assert f"{metrics} has 1 line(s) that are not JSON records in UTF-8 (line 5)" in caplog.text
  lines = metrics.read_bytes().splitlines(keepends=True)
  assert lines[4] == garbage  # kept as it was
  assert json.loads(lines[5])["step"] == 5


def test_a_torn_last_metrics_line_does_not_swallow_the_next_record(trained, tmp_path, caplog):
  # Probe 8: the resumed run appended step 5's record onto the torn line, and neither parsed.
  model_dir = _copy(trained, tmp_path)
  metrics = model_dir / "metrics.jsonl"
  metrics.write_bytes(metrics.read_bytes() + b'{"step": 5, "time": 1, "tr')
  train.train(_config(model_dir), num_train_steps=5, checkpoint_every=1, log_every=1)
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5]
  assert "line 5 is a torn record" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# The lock (probes 22, 27).


def test_a_symlinked_lock_file_is_refused_and_its_target_left_alone(trained, tmp_path):
  # Probe 22: the lock was opened through the link, and the file it pointed to truncated.
  model_dir = _copy(trained, tmp_path)
  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  (model_dir / locks.LOCK_NAME).symlink_to(victim)
  with pytest.raises(locks.FolderInUseError, match=rf"\.lock is a symbolic link \(to {victim}\).*never followed"):
    train.train(_config(model_dir), num_train_steps=6)
  assert victim.read_text() == "precious\n"
  assert _steps(model_dir) == [3, 4]


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_lock_file_deleted_or_replaced_under_its_holder_is_noticed(tmp_path, change):
  lock = locks.DirectoryLock(tmp_path).acquire()
  try:
    lock.check()
    (tmp_path / locks.LOCK_NAME).unlink()
    if change == "replaced":
      second = locks.DirectoryLock(tmp_path).acquire()  # what a second writer could now do
      second.release()
    with pytest.raises(locks.FolderInUseError, match=rf"\.lock was {change} while this training run held it"):
      lock.check()
  finally:
    lock.release()


def test_deleting_the_lock_during_training_stops_the_run_at_its_next_checkpoint(trained, tmp_path):
  # Probe 27: after `rm .lock` a second training started, and both wrote the folder.
  model_dir = _copy(trained, tmp_path)
  lock_file = model_dir / locks.LOCK_NAME
  stop = threading.Event()

  def delete_the_lock_after_step_5():
    while not stop.is_set():
      if (model_dir / "checkpoints" / "5").is_dir() and lock_file.exists():
        lock_file.unlink()
        return
      time.sleep(0.001)

  deleter = threading.Thread(target=delete_the_lock_after_step_5)
  deleter.start()
  try:
    with pytest.raises(locks.FolderInUseError, match="was deleted while this training run held it"):
      train.train(_config(model_dir), num_train_steps=100_000, checkpoint_every=1, log_every=1000)
  finally:
    stop.set()
    deleter.join()
  assert 5 <= max(_steps(model_dir)) < 100


# ---------------------------------------------------------------------------------------------------------------
# `~` in MODEL_DIR (probe 25).


def test_a_tilde_in_model_dir_is_the_home_folder(tmp_path, monkeypatch):
  # Probe 25: --gin.MODEL_DIR="'~/x'" created a folder literally named '~' in the current folder.
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  cfg = _config("~/runs/x", initial_checkpoint_path="~/backbone")
  assert cfg.model_dir == str(tmp_path / "home" / "runs" / "x")
  assert cfg.initial_checkpoint_path == str(tmp_path / "home" / "backbone")
