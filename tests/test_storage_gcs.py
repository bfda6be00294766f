"""Training into gs:// (MODEL_DIR on Cloud Storage), on a real GCS emulator process on 127.0.0.1: a run killed with
kill -9 resumes exactly and is evaluated from the bucket; one writer per gs:// folder (the lock object); a missing
bucket is refused up front; a bucket that stops answering ends the run with our error in bounded time."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning import locks, storage

ROOT = Path(__file__).resolve().parents[1]
# `prompt-tuning` in a fresh process, with the tests' tiny task registered (tests/tiny_task.py).
PROGRAM = [
  "-c",
  f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import tiny_task; tiny_task.register(); "
  "import runpy; runpy.run_module('prompt_tuning.cli', run_name='__main__')",
]


def _start_training(flags, model_dir: str, env: dict[str, str], log: Path) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **env)
  command = [sys.executable, *PROGRAM, "train", *flags, f"--gin.MODEL_DIR='{model_dir}'"]
  with open(log, "wb") as out:
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _wait_for(path, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
  deadline = time.monotonic() + timeout
  while not storage.path(path).exists():
    assert proc.poll() is None, f"training ended before {path} appeared:\n{log.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
    time.sleep(0.05)


def _bucket_prompt(model_dir: str, step: int) -> np.ndarray:
  return np.load(io.BytesIO(storage.path(f"{model_dir}/numpy_checkpoints/checkpoint_{step}/prompt.npy").read_bytes()))


def test_a_run_in_gs_killed_with_kill_9_resumes_exactly_and_is_evaluated_from_the_bucket(
  gcs_emulator, trained_run, tmp_path, _cli, caplog
):
  from prompt_tuning import validation

  model_dir = f"{gcs_emulator}/killed_run"
  log = tmp_path / "train.log"
  proc = _start_training(trained_run.flags, model_dir, {}, log)
  try:
    _wait_for(f"{model_dir}/checkpoints/1/commit_success.txt", proc, log)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  killed_at = validation.newest_checkpoint_step(model_dir)
  assert killed_at is not None and killed_at < 4, log.read_text()[-2000:]
  assert storage.path(f"{model_dir}/.lock").exists()  # kill -9: the lock object stays behind

  # The same command again: the dead writer's lock (this host, its PID gone) is taken over, the run resumes.
  resumed = _cli("train", *trained_run.flags, f"--gin.MODEL_DIR='{model_dir}'")
  del resumed
  assert "took over the stale lock" in caplog.text and "no longer running on this host" in caplog.text
  assert validation.newest_checkpoint_step(model_dir) == 4
  # Exactly: the same prompt as the session's run trained without a stop into a local folder.
  expected = np.load(trained_run.model_dir / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy")
  np.testing.assert_array_equal(_bucket_prompt(model_dir, 4), expected)
  steps = [json.loads(line)["step"] for line in storage.path(f"{model_dir}/metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4]
  assert [p.name for p in storage.path(f"{model_dir}/tensorboard").iterdir() if "tfevents" in p.name]
  assert not storage.path(f"{model_dir}/.lock").exists()  # released at the end
  kept = sorted(p.name for p in storage.path(f"{model_dir}/numpy_checkpoints").iterdir())
  assert kept == ["checkpoint_3", "checkpoint_4"]  # pruned with the orbax checkpoints (keep 2)

  # Evaluated from the bucket, by a process other than the one that trained it.
  flags = ("--gin_file=runs/prompt_eval.gin", *trained_run.flags[:3], f"--gin.MODEL_DIR='{model_dir}'")
  _cli("eval", *flags)
  record = json.loads(storage.path(f"{model_dir}/eval_metrics.jsonl").read_text().splitlines()[-1])
  assert record["step"] == 4 and np.isfinite(record["loss"])


def test_one_writer_per_gs_folder_and_a_stale_lock_is_taken_over(gcs_emulator, caplog):
  folder = f"{gcs_emulator}/locked"
  first = locks.DirectoryLock(folder, what="training run")
  assert isinstance(first, locks.BucketLock)
  with first:
    with pytest.raises(locks.FolderInUseError, match=rf"in use by PID {os.getpid()} on .*heartbeat 0 s ago"):
      locks.DirectoryLock(folder).acquire()
    first.check()  # still held: the heartbeat is renewed
    # Another writer replaced the lock object: the holder stops at its next checkpoint instead of writing beside it.
    storage.path(f"{folder}/.lock").write_text(json.dumps({"pid": 1, "host": "other", "heartbeat": time.time()}))
    with pytest.raises(locks.FolderInUseError, match="taken by PID 1 on other"):
      first.check()
  # A writer on another host that stopped beating 20 minutes ago: taken over, with a message.
  stale = {"pid": 4321, "host": "tpu-host-7", "what": "training run", "started": 0, "heartbeat": time.time() - 1200}
  storage.path(f"{folder}/.lock").write_text(json.dumps(stale))
  with locks.DirectoryLock(folder) as second:
    assert second.stale_holder["pid"] == 4321
    holder = json.loads(storage.path(f"{folder}/.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["token"]
  assert "took over the stale lock of PID 4321 on tpu-host-7" in caplog.text and "20.0 minutes" in caplog.text
  assert not storage.path(f"{folder}/.lock").exists()


def test_a_missing_bucket_is_refused_before_the_backbone_loads(gcs_emulator, trained_run, _cli):
  refused = _cli("train", *trained_run.flags, "--gin.MODEL_DIR='gs://no-such-bucket/run'", check=False)
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert "the bucket gs://no-such-bucket does not exist" in refused.stderr
  assert "trainable parameters" not in refused.stderr  # nothing was built


def test_a_bucket_that_stops_answering_ends_the_run_with_our_error_in_bounded_time(trained_run, tmp_path):
  import gcs_emulator as emulator

  server, url = emulator.start(tmp_path / "server.log")
  model_dir = f"gs://{emulator.BUCKET}/run"
  log = tmp_path / "train.log"
  proc = _start_training([*trained_run.flags, "--gin.TRAIN_STEPS=1000"], model_dir, emulator.env(url), log)
  try:
    while "checkpoints/2/commit_success.txt" not in (tmp_path / "server.log").read_text():
      assert proc.poll() is None, log.read_text()[-3000:]
      time.sleep(0.05)
    emulator.stop(server)
    stopped = time.monotonic()
    proc.wait(timeout=240)  # gcsfs's 6 tries (about 30 s of back-off) of the request that found it gone, then ours
    seconds = time.monotonic() - stopped
  finally:
    proc.kill()
    proc.wait()
    emulator.stop(server)
  out = log.read_text()
  errors = [line for line in out.splitlines() if line.startswith("error:")]
  assert proc.returncode == 1 and len(errors) == 1, out[-3000:]
  assert "StorageError" in errors[0] and f"{model_dir} stopped answering" in errors[0]
  assert "resumes from the last finished checkpoint" in errors[0]
  assert "Traceback" not in out, out[-3000:]
  assert seconds < 120
