"""Training into gs:// (MODEL_DIR on Cloud Storage) on a real GCS emulator process on 127.0.0.1: two processes share
a gs:// MODEL_DIR, are killed with kill -9 and resume, train as one process trains (the same losses and prompt,
an evaluation split unevenly over the processes), and a third evaluates from the bucket; one writer per gs://
folder (the lock object); a missing bucket is refused up front; a bucket that stops answering ends the run with our
error in bounded time."""

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
import simulated_devices

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


def _metrics(model_dir) -> dict[int, dict[str, float]]:
  """metrics.jsonl's records by step (a step's train and eval records merged)."""
  by_step: dict[int, dict[str, float]] = {}
  for line in storage.path(f"{model_dir}/metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    by_step.setdefault(record["step"], {}).update(record)
  return by_step


def test_two_processes_train_into_gs_are_killed_resume_train_like_one_and_a_third_evaluates(
  gcs_emulator, reference_dir, tmp_path, _cli
):
  import gcs_emulator as emulator
  from local_task_files import cli_flags

  from prompt_tuning import validation

  # The tiny run on a local task whose validation split (9 examples) splits unevenly over 2 processes; unshuffled:
  # two processes read examples 0,2,4,.. and 1,3,5,..: one process's global batch. A checkpoint every step, the
  # newest 2 kept, an evaluation at step 4.
  task_flags = cli_flags(reference_dir, tmp_path / "data", "gcs_pod_yes_no", validation=9)
  flags = [
    *task_flags,
    "--gin.CHECKPOINT_EVERY=1",
    "--gin.RunConfig.keep_checkpoints=2",
    "--gin.RunConfig.shuffle=False",
    "--gin.EVAL_EVERY=4",
  ]
  model_dir = f"{gcs_emulator}/pod_run"
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": simulated_devices.xla_flags(1)}  # the suite's fast compiles, 1 device

  def two_processes(tag: str) -> list[subprocess.Popen]:
    port = emulator.free_port()
    return [
      _start_training(
        [*flags, f"--coordinator_address=127.0.0.1:{port}", "--process_count=2", f"--process_index={index}"],
        model_dir,
        env,
        tmp_path / f"{tag}_{index}.log",
      )
      for index in (0, 1)
    ]

  procs = two_processes("killed")
  try:
    _wait_for(f"{model_dir}/checkpoints/1/commit_success.txt", procs[0], tmp_path / "killed_0.log")
    for proc in procs:
      os.kill(proc.pid, signal.SIGKILL)
  finally:
    for proc in procs:
      proc.kill()
      proc.wait()
  killed_at = validation.newest_checkpoint_step(model_dir)
  assert killed_at is not None and killed_at < 4, (tmp_path / "killed_0.log").read_text()[-2000:]
  assert storage.path(f"{model_dir}/.lock").exists()  # kill -9: process 0's lock object stays behind

  # The same two commands again: process 0 takes over its dead predecessor's lock (this host, PID gone); both resume.
  procs = two_processes("resumed")
  for index, proc in enumerate(procs):
    try:
      proc.wait(timeout=400)
    finally:
      proc.kill()
    log = (tmp_path / f"resumed_{index}.log").read_text()
    assert proc.returncode == 0, log[-3000:]
  assert "took over the stale lock" in (tmp_path / "resumed_0.log").read_text()
  assert validation.newest_checkpoint_step(model_dir) == 4
  lines = [json.loads(line) for line in storage.path(f"{model_dir}/metrics.jsonl").read_text().splitlines()]
  # Written by process 0 only (two processes that had not joined would both write every step); the steps after the
  # kill's checkpoint once.
  assert [m["step"] for m in lines if "train/loss" in m] == [1, 2, 3, 4]
  assert [p.name for p in storage.path(f"{model_dir}/tensorboard").iterdir() if "tfevents" in p.name]
  assert not storage.path(f"{model_dir}/.lock").exists()  # released at the end
  kept = sorted(p.name for p in storage.path(f"{model_dir}/numpy_checkpoints").iterdir())
  assert kept == ["checkpoint_3", "checkpoint_4"]  # pruned with the orbax checkpoints (keep 2)

  # The same training in one process (this one) without a stop, into a local folder: the losses of every step and
  # the same prompt (to float rounding: two processes sum their gradients in another order).
  _cli("train", *flags, f"--gin.MODEL_DIR='{tmp_path / 'one'}'")
  two, one = _metrics(model_dir), _metrics(tmp_path / "one")
  losses_two = {step: m["train/loss"] for step, m in two.items() if "train/loss" in m}
  losses_one = {step: m["train/loss"] for step, m in one.items() if "train/loss" in m}
  assert sorted(losses_two) == [1, 2, 3, 4]
  assert losses_two == pytest.approx(losses_one, rel=1e-5)
  # Evaluation over 9 examples: 5 on process 0 (2 batches of 4), 4 on process 1 (1 batch), so process 1 pads with
  # an empty batch instead of stalling; the token-weighted metrics equal one process's over all 9.
  assert two[4]["eval/num_tokens"] == one[4]["eval/num_tokens"]
  assert two[4]["eval/loss"] == pytest.approx(one[4]["eval/loss"], rel=1e-5)
  expected = np.load(tmp_path / "one" / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy")
  np.testing.assert_allclose(_bucket_prompt(model_dir, 4), expected, rtol=1e-5, atol=1e-7)

  # Evaluated from the bucket by a third process (this one).
  _cli("eval", "--gin_file=runs/prompt_eval.gin", *task_flags, f"--gin.MODEL_DIR='{model_dir}'")
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
  # 2 tries of each gcsfs request (about 1 s of back-off) rather than gcsfs's 6 (about 30 s): the same path to the
  # error, sooner.
  env = {**emulator.env(url), storage.GCS_TRIES_ENV: "2"}
  proc = _start_training([*trained_run.flags, "--gin.TRAIN_STEPS=1000"], model_dir, env, log)
  try:
    while "checkpoints/2/commit_success.txt" not in (tmp_path / "server.log").read_text():
      assert proc.poll() is None, log.read_text()[-3000:]
      time.sleep(0.05)
    emulator.stop(server)
    stopped = time.monotonic()
    proc.wait(timeout=240)  # the tries of the request that found it gone, then ours
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


def test_a_bad_number_of_gcs_tries_is_refused_with_the_range():
  for tries in ("0", "7", "two", ""):
    with pytest.raises(storage.StorageError, match=r"PROMPT_TUNING_GCS_TRIES=.*whole number of tries from 1 to 6"):
      storage._set_gcsfs_tries(tries)


def test_a_damaged_checkpoint_in_gs_is_moved_aside_and_the_previous_one_restored(gcs_emulator, trained_run, caplog):
  from prompt_tuning import train

  model_dir = f"{gcs_emulator}/damaged_run"
  storage.upload_folder(trained_run.model_dir, model_dir)  # as `gcloud storage cp -r` would
  for step in (3, 4):  # orbax marks each finished step so on gs:// (a local folder is renamed into place instead)
    storage.path(f"{model_dir}/checkpoints/{step}/commit_success.txt").write_text("")
  storage.path(f"{model_dir}/checkpoints/4/state/_METADATA").unlink()  # a copy cut short
  build = train.build(trained_run.config(model_dir))
  try:
    assert build.start_step == 3
    np.testing.assert_array_equal(np.asarray(build.state.trainable["prompt"]), _bucket_prompt(model_dir, 3))
  finally:
    build.checkpoints.close()
  assert "skipped damaged training checkpoint 4" in caplog.text
  assert storage.path(f"{model_dir}/damaged_checkpoints/4/meta/metadata").exists()  # moved aside, not deleted
  assert not storage.path(f"{model_dir}/checkpoints/4").exists()


def test_a_sweep_on_gs_trains_into_the_bucket_is_locked_resumed_reported(gcs_emulator, reference_dir, tmp_path, _cli):
  from sweep_files import write_sweep

  from prompt_tuning.sweeps import records

  axes = "sweep.axes = {'seed': @seed/axis()}\nseed/axis.binding = 'RunConfig.seed'\nseed/axis.values = [0]\n"
  sweep_file = write_sweep(tmp_path, "tiny_gs", steps=2, axes=axes)
  sweep_dir = f"{gcs_emulator}/sweeps/tiny"
  run = f"{sweep_dir}/runs/seed=0"
  argv = ["sweep", "run", str(sweep_file), f"--sweep_dir={sweep_dir}"]
  with locks.DirectoryLock(sweep_dir, what="sweep"):  # another driver holds the gs:// sweep folder
    refused = _cli(*argv, check=False)
  assert refused.returncode == 1 and f"{sweep_dir} is in use by" in refused.stderr
  assert not storage.path(f"{sweep_dir}/runs").exists()  # nothing was started

  first = _cli(*argv)
  assert "1 runs, 0 already done; running 1" in first.stdout and "done seed=0" in first.stdout
  # The run's MODEL_DIR is in the bucket, with its records beside its checkpoints; nothing went to a local "gs:".
  assert records.read_run(records.run_dir(sweep_dir, "seed=0")).command[-1] == f"--gin.MODEL_DIR={run!r}"
  for name in ("sweep.json", "runs/seed=0/command.sh", "runs/seed=0/done.json", "runs/seed=0/checkpoints/2"):
    assert storage.path(f"{sweep_dir}/{name}").exists(), name
  assert "=== attempt at" in storage.path(f"{run}/log.txt").read_text()
  assert [a["returncode"] for a in records.read_attempts(storage.path(run))] == [0]
  assert not storage.path(f"{run}/running.json").exists() and not storage.path(f"{sweep_dir}/.lock").exists()
  assert not (ROOT / "gs:").exists() and not (tmp_path / "gs:").exists()

  again = _cli(*argv)  # the run's state is read from the bucket: done, not started again
  assert "1 runs, 1 already done; running 0" in again.stdout
  status = _cli("sweep", "status", sweep_dir).stdout
  assert status.splitlines()[0].split() == ["done", "2/2", "seed=0"] and "done 1  running 0" in status

  report = _cli("sweep", "report", sweep_dir)
  assert "# Sweep tiny_gs: validation" in report.stdout and f"markdown: {sweep_dir}/report/results.md" in report.stdout
  runs_csv = storage.path(f"{sweep_dir}/report/runs.csv").read_text().splitlines()
  assert runs_csv[0].startswith("run,seed,state,final,best") and runs_csv[1].startswith("seed=0,0,done,")
  events = list(storage.path(f"{sweep_dir}/tensorboard/seed=0").iterdir())
  assert [p for p in events if "tfevents" in p.name]
  missing = _cli("sweep", "status", f"{gcs_emulator}/no_such_sweep", check=False)
  assert missing.returncode == 1 and "is not a sweep folder" in missing.stderr


def test_export_and_inspect_read_a_gs_model_dir_and_export_into_the_bucket(gcs_emulator, trained_run, tmp_path, _cli):
  import tiny_task

  from prompt_tuning import transfer
  from prompt_tuning.checkpoints import prompt_files

  model_dir = f"{gcs_emulator}/exported_run"
  storage.upload_folder(trained_run.model_dir, model_dir)  # as `gcloud storage cp -r` would
  newest = np.load(trained_run.model_dir / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy")

  _cli("export", model_dir, str(tmp_path / "prompt"), "--format=npy")  # the newest step's prompt, from the bucket
  np.testing.assert_array_equal(np.load(tmp_path / "prompt.npy"), newest)
  exported = _cli("export", model_dir, f"{model_dir}/peft", "--base_model=google/t5-efficient-tiny")
  assert f"to {model_dir}/peft" in exported.stdout
  assert json.loads(storage.path(f"{model_dir}/peft/adapter_config.json").read_text())["num_virtual_tokens"] == 3
  np.testing.assert_array_equal(prompt_files.load_prompt_file(f"{model_dir}/peft"), newest)  # PEFT folder, on gs://

  # `transfer SOURCE` (and a SPoT sweep's ranked_source) reads a gs:// MODEL_DIR too, with the backbone it records.
  source = transfer.read_source(model_dir)
  np.testing.assert_array_equal(source.prompt, newest)
  assert source.backbone == prompt_files.recorded_backbone(trained_run.model_dir) and source.backbone
  with pytest.raises(transfer.TransferError, match="a prompt library is a local folder"):
    transfer.read_source("demo-id", [f"{gcs_emulator}/library"])

  inspected = _cli("inspect", model_dir, f"--checkpoint={tiny_task.T5X_TINY}", "--k=2").stdout
  assert inspected == _cli("inspect", str(trained_run.model_dir), f"--checkpoint={tiny_task.T5X_TINY}", "--k=2").stdout
  missing = _cli("export", f"{gcs_emulator}/no_such_run", str(tmp_path / "x"), check=False)
  assert missing.returncode == 1 and f"no prompt at {gcs_emulator}/no_such_run" in missing.stderr
