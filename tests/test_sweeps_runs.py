"""Sweeps for real: tiny runs through `prompt-tuning sweep run`, a driver killed mid-sweep, retries, a Ray cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_files import TINY_AXES, TINY_RUNS, write_sweep  # noqa: E402

from prompt_tuning import cli  # noqa: E402
from prompt_tuning.sweeps import records, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
  return dict(
    os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
  )


def _sweep_command(*args) -> list[str]:
  return [sys.executable, "-m", "prompt_tuning.cli", "sweep", *map(str, args)]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def _checkpoint_steps(folder: Path) -> list[int]:
  checkpoints = folder / "checkpoints"
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


# The tiny sweep at seed 0 only: its first three runs (prompt tuning, model tuning, a shorter prompt), each figure's
# two points. The mean ± std over two seeds is tests/test_faults_sweeps.py's finished 2-seed sweep's.
RESUMED_AXES = TINY_AXES.replace("seed/axis.values = [0, 1]", "seed/axis.values = [0]")
RESUMED_RUNS = TINY_RUNS[:3]


def test_killed_sweep_resumes_without_redoing_finished_runs_then_reports(reference_dir, tmp_path, capsys):
  sweep_file = write_sweep(tmp_path, "tiny_resume", steps=24, axes=RESUMED_AXES)
  sweep_dir = tmp_path / "out"
  first, second = (records.run_dir(sweep_dir, name) for name in RESUMED_RUNS[:2])
  driver = subprocess.Popen(
    _sweep_command("run", sweep_file, "--sweep_dir", sweep_dir),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    env=_env(),
    cwd=ROOT,
  )
  deadline = time.time() + 300
  # Kill the driver once the first run is done and the second (model tuning) has a checkpoint past its first.
  reached = False
  while time.time() < deadline and driver.poll() is None:
    if (first / "done.json").is_file() and any(step >= 8 for step in _checkpoint_steps(second)):
      reached = True
      break
    time.sleep(0.02)
  assert driver.poll() is None, "the sweep ended before it could be killed:\n" + driver.stdout.read().decode()[-3000:]
  if not reached:  # a very slow machine: say so, rather than fail later on what the kill found
    driver.kill()
    output = driver.communicate()[0].decode()[-3000:]
    pytest.fail(f"in 300 s the first run did not finish or the second reach a checkpoint at step 8:\n{output}")
  run_pid = json.loads((second / "running.json").read_text())["pid"]
  os.kill(driver.pid, signal.SIGKILL)
  killed_time = time.time()
  driver.wait()
  driver.stdout.close()
  for _ in range(250):  # the run dies with its driver (PR_SET_PDEATHSIG)
    if not _alive(run_pid):
      break
    time.sleep(0.02)
  assert not _alive(run_pid), "the killed driver's run is still running"
  states = {s.name: s.state for s in records.sweep_status(sweep_dir)}
  assert states == {
    RESUMED_RUNS[0]: "done",
    RESUMED_RUNS[1]: "interrupted",
    RESUMED_RUNS[2]: "pending",
  }
  killed_at = max(_checkpoint_steps(second))
  assert killed_at < 24
  finished_metrics = (first / "metrics.jsonl").stat()

  # The driver that resumes it runs in this process (a killed driver is what needs a process of its own).
  code = cli.main(["sweep", "run", str(sweep_file), "--sweep_dir", str(sweep_dir), "--parallel", "2"])
  again = capsys.readouterr()
  assert code == 0, again.out[-3000:] + again.err[-3000:]
  assert "3 runs, 1 already done; running 2" in again.out
  # The finished run was not touched; the interrupted one went on from its checkpoint, not from step 1.
  assert (first / "metrics.jsonl").stat().st_mtime_ns == finished_metrics.st_mtime_ns
  assert (first / "metrics.jsonl").stat().st_size == finished_metrics.st_size
  assert len(records.read_attempts(first)) == 1
  rows = [row for row in records.read_metrics(second) if "train/loss" in row]
  assert [row["step"] for row in rows] == list(range(1, 25))  # every step once (repeats are dropped on resume)
  # The steps up to the checkpoint were written before the kill and kept: the run went on from there, not step 1.
  assert all(row["time"] < killed_time for row in rows if row["step"] <= killed_at)
  assert all(row["time"] > killed_time for row in rows if row["step"] > killed_at + 1)
  assert (second / "log.txt").read_text().count("=== attempt") == 2
  # Every run's record holds the command that reproduces it, with its own MODEL_DIR under the sweep's folder.
  for name in RESUMED_RUNS:
    record = records.read_run(records.run_dir(sweep_dir, name))
    assert record.command[1:4] == ["-m", "prompt_tuning.cli", "train"]
    assert record.command[-1] == f"--gin.MODEL_DIR={str(records.run_dir(sweep_dir, name))!r}"
    assert (records.run_dir(sweep_dir, name) / "command.sh").read_text().startswith("#!/bin/sh")
  assert {s.state for s in records.sweep_status(sweep_dir)} == {"done"}

  written = report.write_report(sweep_dir)
  table = written["markdown"].read_text()
  prompt3 = next(line for line in table.splitlines() if "| tiny | prompt | 3 |" in line)
  assert "| 1 |" in prompt3 and "±" not in prompt3  # one seed: its value, no std
  model_line = next(line for line in table.splitlines() if "| tiny | model | - |" in line)
  assert "257,856" in model_line  # every tiny weight trainable
  assert {"fig1_size", "fig3a_prompt_length", "csv", "runs_csv", "tensorboard"} <= set(written)
  assert "fig3b_init" not in written  # the tiny sweep has no init axis
  for name in ("fig1_size", "fig3a_prompt_length"):
    assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  rows = written["csv"].read_text().splitlines()
  assert len(rows) == 1 + 3  # header, three groups
  _assert_hparams(written["tensorboard"], RESUMED_RUNS)


def _assert_hparams(folder: Path, runs: list[str]) -> None:
  import tensorflow as tf

  plugins = set()
  for name in runs:
    for event_file in (folder / name).glob("events.out.tfevents.*"):
      for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        plugins |= {v.metadata.plugin_data.plugin_name for v in event.summary.value}
  assert "hparams" in plugins


def test_a_failing_run_is_retried_then_shown_failed_with_its_error(reference_dir, tmp_path, capsys):
  axes = """
sweep.axes = {'seed': @seed/axis()}
seed/axis.binding = 'RunConfig.seed'
seed/axis.values = [0]
"""
  sweep_file = write_sweep(tmp_path, "tiny_fail", steps=4, axes=axes, extra_bindings=["BATCH_SIZE = 3"])
  sweep_dir = tmp_path / "out"
  # num_microbatches 2 does not divide batch 3: a setting the run would refuse is refused by the plan, up front.
  argv = ["sweep", "run", str(sweep_file), f"--sweep_dir={sweep_dir}", "--attempts", "2"]
  assert cli.main([*argv, "--gin.RunConfig.num_microbatches=2"]) == 1
  assert "SettingError: BATCH_SIZE 3 must be a multiple of NUM_MICROBATCHES 2" in capsys.readouterr().err
  assert not sweep_dir.exists()
  # A backbone that is not there is only found by the run itself (planning reads no checkpoint): it fails, twice.
  missing = tmp_path / "no_such_checkpoint"
  code = cli.main([*argv, f"--gin.INITIAL_CHECKPOINT_PATH='{missing}'"])
  out, err = capsys.readouterr()
  assert code == 1
  assert "FAILED seed=0" in out and "2 attempts" in out, f"stdout: {out[-2000:]}\nstderr: {err[-3000:]}"
  assert cli.main(["sweep", "status", str(sweep_dir)]) == 0
  status = capsys.readouterr().out
  assert "failed" in status.splitlines()[0]
  assert "error: " in status and str(missing) in status
  assert "error: error:" not in status
  assert "done 0  running 0  failed 1" in status
  attempts = records.read_attempts(records.run_dir(sweep_dir, "seed=0"))
  assert [a["returncode"] for a in attempts] == [1, 1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
  """A Ray head on 127.0.0.1 (2 CPUs) in its own temporary folder; stopped (its processes with it) afterwards."""
  pytest.importorskip("ray")
  temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
  port = _free_port()
  command = [
    str(Path(sys.executable).parent / "ray"),
    "start",
    "--head",
    "--block",
    f"--port={port}",
    "--node-ip-address=127.0.0.1",
    "--num-cpus=2",
    "--include-dashboard=false",
    "--disable-usage-stats",
    f"--temp-dir={temp}",
  ]
  # Its own session: when a Ray process dies, `ray start --block` tears the cluster down, and must not take the
  # test's process group with it.
  # SIGINT's default action in the head (a background `make test &` starts with SIGINT ignored, and children
  # inherit that): the SIGINT below is what stops it and the processes it started.
  head = subprocess.Popen(
    command,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=_env(),
    start_new_session=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  seen = []
  for line in head.stdout:
    seen.append(line)
    if "Ray runtime started" in line:
      break
  assert head.poll() is None, "".join(seen)
  try:
    yield f"127.0.0.1:{port}"
  finally:
    head.send_signal(signal.SIGINT)  # `ray start --block` stops the processes it started
    try:
      head.wait(timeout=30)
    except subprocess.TimeoutExpired:
      head.kill()
      head.wait()
    head.stdout.close()
    subprocess.run(["rm", "-rf", temp], check=False)


def test_ray_cluster_by_address_runs_a_sweep(reference_dir, ray_cluster, tmp_path, capsys):
  axes = """
sweep.axes = {'method': @method/axis()}
method/axis.values = {
  'prompt': [],
  'model': ['PROMPT_LENGTH = 0', "TRAINABLE_PATTERN = '.*'", 'adafactor.learning_rate = 1e-3'],
}
"""
  sweep_file = write_sweep(tmp_path, "tiny_ray", steps=4, axes=axes)
  sweep_dir = tmp_path / "out"
  code = cli.main(
    ["sweep", "run", str(sweep_file), f"--sweep_dir={sweep_dir}", "--executor=ray", f"--ray_address={ray_cluster}"]
  )
  out = capsys.readouterr().out
  assert code == 0, out
  statuses = records.sweep_status(sweep_dir)
  assert [(s.name, s.state, s.step) for s in statuses] == [("method=prompt", "done", 4), ("method=model", "done", 4)]
  executors = {a["executor"] for s in statuses for a in records.read_attempts(records.run_dir(sweep_dir, s.name))}
  assert len(executors) == 1 and executors.pop().startswith("ray:")  # both ran as tasks on the cluster's one node
