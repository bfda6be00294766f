"""Many processes (multi-host): `jax.distributed` from t5x's command-line flags, or from the cluster.

    prompt-tuning train --gin_file=... --multiprocess_gpu                          # SLURM / Open MPI: auto-detected
    prompt-tuning train --gin_file=... --coordinator_address=10.0.0.1:1234 --process_count=2 --process_index=0

t5x's flags, with t5x's meaning: `--multiprocess_gpu` initializes
`jax.distributed`, taking `--coordinator_address`, `--process_count` and
`--process_index` when given and letting JAX detect the rest from the cluster
(SLURM, Open MPI, Kubernetes). Beyond t5x, the three flags alone (without
`--multiprocess_gpu`) also initialize it, on any platform (CPU processes on one
machine included), and with no flag at all a cluster environment that JAX
recognizes and that holds more than one process (a TPU pod slice, a SLURM job
of several tasks, an Open MPI job) initializes it with no arguments.

It must run before anything touches a device (`jax.devices()`, an array):
`prompt_tuning.cli` calls `initialize_from_flags` right after parsing flags.
CPU processes exchange data through gloo (`jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Environment variables that say a cluster launched more than one process, by the launcher JAX detects.
_CLUSTER_SIZES = (
  ("SLURM", "SLURM_NTASKS"),
  ("Open MPI", "OMPI_COMM_WORLD_SIZE"),
  ("Cloud TPU pod", "TPU_WORKER_HOSTNAMES"),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds t5x's multi-process flags to a command's parser."""
  group = parser.add_argument_group("many processes (jax.distributed; t5x's flags)")
  group.add_argument(
    "--multiprocess_gpu",
    action="store_true",
    help="initialize jax.distributed (GPU clusters); unset values are detected from SLURM / Open MPI",
  )
  group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0's coordinator service")
  group.add_argument("--process_count", type=int, default=None, help="number of processes in the job")
  group.add_argument("--process_index", type=int, default=None, help="this process's index, 0 .. process_count-1")


def cluster_processes(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
  """(launcher, process count) when the environment is a multi-process cluster job, else None."""
  for name, variable in _CLUSTER_SIZES:
    value = environ.get(variable, "").strip()
    if not value:
      continue
    count = len(value.split(",")) if variable == "TPU_WORKER_HOSTNAMES" else int(value) if value.isdigit() else 1
    if count > 1:
      return name, count
  return None


def _check_flags(args: argparse.Namespace) -> None:
  given = {name: getattr(args, name) for name in ("coordinator_address", "process_count", "process_index")}
  if not args.multiprocess_gpu and any(v is not None for v in given.values()):
    missing = [f"--{name}" for name, value in given.items() if value is None]
    if missing:
      raise ValueError(
        f"{', '.join(missing)} missing: without --multiprocess_gpu (which detects them from SLURM / Open MPI), "
        "give --coordinator_address, --process_count and --process_index together."
      )
  count, index = args.process_count, args.process_index
  if count is not None and count < 1:
    raise ValueError(f"--process_count={count} must be at least 1.")
  if index is not None and not 0 <= index < (count if count is not None else index + 1):
    raise ValueError(f"--process_index={index} must be in 0 .. {count - 1} (--process_count={count}).")


def initialize_from_flags(args: argparse.Namespace) -> bool:
  """Initializes `jax.distributed` as the flags (or the cluster) ask; returns whether it did.

  Raises:
    ValueError: for an incomplete or inconsistent set of flags.
  """
  _check_flags(args)
  explicit = args.coordinator_address is not None
  cluster = cluster_processes()
  if not (args.multiprocess_gpu or explicit or cluster):
    return False
  import jax

  # CPU devices of different processes talk through gloo; accelerators ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if args.multiprocess_gpu or explicit:
    jax.distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.process_count,
      process_id=args.process_index,
    )
  else:
    log.info("%s job of %d processes detected: initializing jax.distributed", *cluster)
    jax.distributed.initialize()
  log.info("process %d of %d", jax.process_index(), jax.process_count())
  return True


def equal_batch_counts(batches: list[dict]) -> list[dict]:
  """Pads this process's evaluation batches, with empty ones, to the largest count of any process.

  Every process must run each collective evaluation step; when the split's
  shards differ in length (e.g. 17 examples over 2 processes) the longer one
  would otherwise wait forever for the others. Empty batches are all zeros:
  padding rows with zero loss weight, which add nothing to the metrics. Every
  process calls it (it is collective).

  Raises:
    ValueError: on every process alike, when some process has no batch at all
      while others have some (nothing to shape its empty batches on).
  """
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return batches
  counts = multihost_utils.process_allgather(np.int32(len(batches)))  # [processes]
  most = int(np.max(counts))
  if most and not int(np.min(counts)):
    raise ValueError(
      "a process has no evaluation data while others do: the split has fewer examples than processes; "
      f"evaluate on fewer processes or a larger split (batches per process: {counts.tolist()})."
    )
  if most == len(batches):
    return batches
  empty = {key: np.zeros_like(value) for key, value in batches[0].items()}
  return batches + [empty] * (most - len(batches))
