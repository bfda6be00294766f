"""The CLI's t5x multi-process flags: incomplete ones refused up front, and the clusters detected from the
environment. Two real `prompt-tuning train` processes on 127.0.0.1 training one model (the same losses as one
process, an evaluation split unevenly over them) are tests/test_storage_gcs.py's
test_two_processes_train_into_gs_are_killed_resume_train_like_one_and_a_third_evaluates."""

from __future__ import annotations

import argparse

import pytest

from prompt_tuning import distributed


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
