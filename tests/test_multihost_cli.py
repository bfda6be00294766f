"""Two real `prompt-tuning train` processes on 127.0.0.1, started through the CLI's t5x flags, train one model."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import simulated_devices
from local_task_files import cli_flags

from prompt_tuning import distributed

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def flags(reference_dir, tmp_path_factory) -> list[str]:
  """A tiny run on a local task whose validation split (9 examples) splits unevenly over 2 processes."""
  folder = tmp_path_factory.mktemp("data")
  return [
    *cli_flags(reference_dir, folder, "multihost_yes_no", validation=9),
    # Unshuffled: 2 processes read examples 0,2,4,6 and 1,3,5,7, one process 0..7: the same global batch.
    "--gin.RunConfig.shuffle=False",
    "--gin.EVAL_EVERY=4",
  ]


def _train(model_dir: Path, flags: list[str], extra: list[str] = ()) -> subprocess.Popen:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = simulated_devices.xla_flags(1)
  cmd = [sys.executable, "-m", "prompt_tuning.cli", "train", *flags, f"--gin.MODEL_DIR='{model_dir}'", *extra]
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  errors = []
  for proc in procs:
    try:
      _, err = proc.communicate(timeout=600)
    finally:
      proc.kill()
    errors.append(err.decode())
  for proc, err in zip(procs, errors):
    assert proc.returncode == 0, err[-4000:]
  return errors


def _metrics(model_dir: Path) -> dict[int, dict[str, float]]:
  by_step: dict[int, dict[str, float]] = {}
  for line in (model_dir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    by_step.setdefault(record["step"], {}).update(record)
  return by_step


def test_two_cli_processes_train_like_one_with_the_same_global_batch(flags, tmp_path, _cli):
  port = _free_port()
  together = tmp_path / "two"
  procs = [
    _train(
      together,
      flags,
      [f"--coordinator_address=127.0.0.1:{port}", "--process_count=2", f"--process_index={index}"],
    )
    for index in (0, 1)
  ]
  _finish(procs)
  # Only process 0 writes metrics: two processes that had not joined would both write every step.
  lines = [json.loads(x) for x in (together / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines if "train/loss" in m] == [1, 2, 3, 4]
  _cli("train", *flags, f"--gin.MODEL_DIR='{tmp_path / 'one'}'")  # one process: this one (a Python start-up less)
  two, one = _metrics(together), _metrics(tmp_path / "one")
  losses_two = {step: m["train/loss"] for step, m in two.items() if "train/loss" in m}
  losses_one = {step: m["train/loss"] for step, m in one.items() if "train/loss" in m}
  assert sorted(losses_two) == [1, 2, 3, 4]
  assert losses_two == pytest.approx(losses_one, rel=1e-5)
  # Evaluation over 9 examples: 5 on process 0 (2 batches of 4), 4 on process 1 (1 batch), so process 1 pads with
  # an empty batch instead of stalling; the token-weighted metrics equal one process's over all 9.
  assert two[4]["eval/num_tokens"] == one[4]["eval/num_tokens"]
  assert two[4]["eval/loss"] == pytest.approx(one[4]["eval/loss"], rel=1e-5)


def _args(**given) -> argparse.Namespace:
  parser = argparse.ArgumentParser()
  distributed.add_flags(parser)
  return parser.parse_args([f"--{k}={v}" if v is not True else f"--{k}" for k, v in given.items()])


def test_incomplete_flags_are_refused_before_anything_starts():
  with pytest.raises(ValueError, match="--process_count, --process_index missing"):
    distributed.initialize_from_flags(_args(coordinator_address="127.0.0.1:1234"))
  with pytest.raises(ValueError, match="--process_index=2 must be in 0 .. 1"):
    distributed.initialize_from_flags(_args(coordinator_address="h:1", process_count=2, process_index=2))
  assert distributed.initialize_from_flags(_args()) is False  # One process, no cluster: nothing to initialize.


def test_cluster_detection():
  assert distributed.cluster_processes({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}) == ("SLURM", 4)
  assert distributed.cluster_processes({"SLURM_NTASKS": "1"}) is None
  assert distributed.cluster_processes({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}) == ("Cloud TPU pod", 4)
  assert distributed.cluster_processes({"OMPI_COMM_WORLD_SIZE": "2"}) == ("Open MPI", 2)
  assert distributed.cluster_processes({}) is None
