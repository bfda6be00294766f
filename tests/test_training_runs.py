"""Whole training runs in subprocesses: kill -9 and resume, 1 vs 8 devices, two processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent / "scripts" / "tiny_train.py"


def _env(devices: int = 1) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _run(model_dir, steps, out, devices=1, extra=(), timeout=600):
  cmd = [sys.executable, str(SCRIPT), str(model_dir), str(steps), "--out", str(out), *extra]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(devices))
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(Path(out).read_text())


@pytest.fixture(scope="module")
def uninterrupted(reference_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("uninterrupted")
  return _run(folder / "run", 24, folder / "out.json", extra=["--checkpoint_every", "4"])


def test_kill_9_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
  model_dir = tmp_path / "run"
  cmd = [sys.executable, str(SCRIPT), str(model_dir), "24", "--checkpoint_every", "4"]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
  deadline = time.time() + 300
  checkpoints = model_dir / "checkpoints"
  # Kill as soon as a checkpoint past the first exists, mid-run.
  while time.time() < deadline and proc.poll() is None:
    if checkpoints.is_dir() and any(p.name.isdigit() and int(p.name) >= 8 for p in checkpoints.iterdir()):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed:\n" + proc.stderr.read().decode()[-2000:]
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 24, steps
  resumed = _run(model_dir, 24, tmp_path / "out.json", extra=["--checkpoint_every", "4"])
  assert resumed["step"] == 24
  np.testing.assert_allclose(resumed["prompt"], uninterrupted["prompt"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mesh", ["8,1", "4,2"])
def test_8_devices_give_the_losses_of_1(reference_dir, tmp_path, mesh):
  one = _run(tmp_path / "one", 4, tmp_path / "one.json")
  eight = _run(tmp_path / "eight", 4, tmp_path / "eight.json", devices=8, extra=["--mesh", mesh])
  for step, loss in one["losses"].items():
    assert eight["losses"][step] == pytest.approx(loss, rel=1e-4), step
  np.testing.assert_allclose(eight["prompt"], one["prompt"], atol=1e-3)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together_and_agree(reference_dir, tmp_path):
  port = _free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(SCRIPT),
        str(tmp_path / "run"),
        "4",
        "--distributed",
        f"{port},{pid},2",
        "--out",
        str(tmp_path / f"out{pid}.json"),
      ],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      env=_env(),
    )
    for pid in (0, 1)
  ]
  for proc in procs:
    try:
      _, err = proc.communicate(timeout=600)
    finally:
      proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
  a, b = (json.loads((tmp_path / f"out{pid}.json").read_text()) for pid in (0, 1))
  assert a["step"] == b["step"] == 4
  assert a["last_loss"] == b["last_loss"] and np.isfinite(a["last_loss"])
  np.testing.assert_array_equal(a["prompt"], b["prompt"])
