"""Whole training runs in subprocesses: 1 device vs 8 on a model-parallel mesh, from the reference T5X checkpoint."""

import json
import os
import subprocess
import sys
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


# Data-parallel (8,1) meshes, kill -9 and resume, and two processes are covered for every tuning method by
# test_method_invariants.py / test_method_resume.py and through the command line by test_multihost_cli.py; this
# keeps the model-parallel mesh on the reference T5X checkpoint.
@pytest.mark.parametrize("mesh", ["4,2"])
def test_8_devices_give_the_losses_of_1(reference_dir, tmp_path, mesh):
  one = _run(tmp_path / "one", 4, tmp_path / "one.json")
  eight = _run(tmp_path / "eight", 4, tmp_path / "eight.json", devices=8, extra=["--mesh", mesh])
  for step, loss in one["losses"].items():
    assert eight["losses"][step] == pytest.approx(loss, rel=1e-4), step
  np.testing.assert_allclose(eight["prompt"], one["prompt"], atol=1e-3)
