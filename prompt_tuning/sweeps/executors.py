"""Running a sweep's runs: locally, N at a time, each pinned to its own cores (and GPUs); or one Ray task per run.

Each run is its ordinary training command (records.command_line) in a subprocess, with its output appended to
log.txt. A run that fails is tried again, up to `attempts` times in all; every try resumes from the run's
checkpoints (the trainer resumes from MODEL_DIR), and a run already done is never started.

Pinning (local): the run's process is bound to its cores with sched_setaffinity before it executes; XLA's and
tf.data's thread pools size themselves from the cores the process may use (sched_getaffinity), so N runs on N core
groups do not oversubscribe the machine. With `gpus_per_run`, CUDA_VISIBLE_DEVICES names the run's GPUs. On Ray,
the scheduler places each task by its resource request (num_cpus, num_gpus) and sets CUDA_VISIBLE_DEVICES itself.

A run's process dies with the process that started it (Linux PR_SET_PDEATHSIG): killing a sweep driver (or a Ray
worker) kills its runs, and the next `sweep run` resumes them from their last checkpoints.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path

from prompt_tuning import storage
from prompt_tuning.sweeps import records

_PR_SET_PDEATHSIG = 1
# Set when the driver is interrupted (Ctrl-C): no further attempt starts, and the runs under way are stopped.
_STOPPING = threading.Event()


@dataclasses.dataclass(frozen=True)
class Task:
  """One run to execute: its folder, command line and planned steps."""

  name: str
  folder: str
  command: tuple[str, ...]
  steps: int


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How a run's attempts ended."""

  name: str
  finished: bool
  attempts: int
  seconds: float
  error: str | None
  interrupted: bool = False


def _child_setup(cores: Sequence[int] | None) -> Callable[[], None]:
  # Resolved here, in the parent: between fork and exec the child makes two system calls and loads nothing.
  prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

  def setup() -> None:  # runs in the child, between fork and exec
    if cores:
      os.sched_setaffinity(0, cores)
    if prctl is not None:
      prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

  return setup


# The planner imported JAX in this process, and JAX warns at every fork of a multithreaded process; the child above
# only makes two system calls before it execs, so none of JAX's state is used in it.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)


def _child_env(gpus: Sequence[int] | None) -> dict[str, str]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"), PYTHONUNBUFFERED="1")
  if gpus:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
  return env


def run_attempt(task: Task, cores=None, gpus=None, executor: str = "local") -> Outcome:
  """Runs the task's command once (blocking), recording the attempt in its folder (`executor`: who ran it).

  The run's output goes to its log.txt; in a gs:// sweep folder (an object cannot be appended to while a process
  writes it) to a local file first, appended to the bucket's log.txt when the attempt ends.
  """
  folder = storage.path(task.folder)
  remote = storage.is_remote(folder)
  if remote:
    handle, staging = tempfile.mkstemp(prefix="sweep-log-", suffix=".txt")
    os.close(handle)
    log_path = Path(staging)
  else:
    log_path = folder / "log.txt"
  offset = log_path.stat().st_size if log_path.is_file() else 0
  start = time.time()
  try:
    with open(log_path, "ab") as log:
      log.write(f"\n=== attempt at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(task.command)}\n".encode())
      log.flush()
      process = subprocess.Popen(
        task.command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(gpus), preexec_fn=_child_setup(cores)
      )
      attempt = records.start_attempt(folder, process.pid, cores, executor)
      returncode = process.wait()
  finally:  # also on Ctrl-C: what the attempt printed reaches the bucket's log.txt
    with open(log_path, "rb") as log:
      log.seek(offset)
      output = log.read()
    if remote:
      try:
        storage.append_text(folder / "log.txt", output.decode(errors="replace"))
      finally:
        log_path.unlink(missing_ok=True)
  error = None if returncode == 0 else records.error_line(output.decode(errors="replace"))
  if returncode < 0:
    error = f"killed by signal {-returncode}" + (f" ({error})" if error else "")
  finished = records.end_attempt(folder, attempt, returncode, error, task.steps)
  error = None if finished else records.read_attempts(folder)[-1]["error"]
  interrupted = returncode in records.INTERRUPTED_RETURNCODES
  return Outcome(task.name, finished, 1, time.time() - start, error, interrupted)


def run_with_retries(task: Task, attempts: int, cores=None, gpus=None, executor: str = "local") -> Outcome:
  """Up to `attempts` tries of one run (each resuming from its checkpoints); the last outcome, attempts counted."""
  total, number, outcome = 0.0, 0, Outcome(task.name, False, 0, 0.0, "not started: the sweep was interrupted")
  while number < attempts and not _STOPPING.is_set():
    outcome = run_attempt(task, cores, gpus, executor)
    number, total = number + 1, total + outcome.seconds
    if outcome.finished or outcome.interrupted:  # Ctrl-C is the user's choice, not a failure to try again
      break
  return dataclasses.replace(outcome, attempts=number, seconds=total)


def core_groups(parallel: int, cores: Sequence[int] | None = None) -> list[list[int]]:
  """The cores this process may use, split into `parallel` groups as evenly as possible (contiguous)."""
  available = sorted(cores if cores is not None else os.sched_getaffinity(0))
  if parallel < 1 or parallel > len(available):
    raise ValueError(f"--parallel {parallel}: this machine lets the sweep use {len(available)} cores; give 1 to that.")
  size, extra = divmod(len(available), parallel)
  groups, start = [], 0
  for i in range(parallel):
    end = start + size + (1 if i < extra else 0)
    groups.append(available[start:end])
    start = end
  return groups


def run_local(
  tasks: Sequence[Task],
  parallel: int = 1,
  attempts: int = 3,
  gpus_per_run: int = 0,
  report: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
  """Runs the tasks `parallel` at a time, each on its own core group (and `gpus_per_run` GPUs)."""
  slots: queue.Queue = queue.Queue()
  for i, cores in enumerate(core_groups(parallel)):
    slots.put((cores, list(range(i * gpus_per_run, (i + 1) * gpus_per_run)) or None))
  lock = threading.Lock()

  def execute(task: Task) -> Outcome:
    cores, gpus = slots.get()
    try:
      outcome = run_with_retries(task, attempts, cores, gpus)
    finally:
      slots.put((cores, gpus))
    with lock:
      report(outcome)
    return outcome

  _STOPPING.clear()
  pool = futures.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-run")
  try:
    submitted = [pool.submit(execute, task) for task in tasks]
    return [f.result() for f in submitted]
  except KeyboardInterrupt:
    # The runs got the same Ctrl-C (one process group) and stop at their own pace; nothing new starts.
    _STOPPING.set()
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _ray_task(task: Task, attempts: int) -> Outcome:
  """What a Ray worker runs: the same retries, on the worker's machine (the sweep folder must be shared: a folder
  every node mounts, or gs://)."""
  import ray

  return run_with_retries(task, attempts, executor=f"ray:{ray.get_runtime_context().get_node_id()}")


def run_ray(
  tasks: Sequence[Task],
  address: str | None = None,
  cpus_per_run: float = 1,
  gpus_per_run: float = 0,
  attempts: int = 3,
  report: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
  """One Ray task per run, with its resource request; on the cluster at `address` (None: a local Ray)."""
  try:
    import ray
  except ImportError as e:
    raise ImportError("--executor ray needs Ray: pip install 'prompt_tuning[sweeps]' (ray==2.60.0).") from e

  started_here = not ray.is_initialized()
  if started_here:
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
  try:
    remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_ray_task)
    pending = {remote.remote(task, attempts): task.name for task in tasks}
    outcomes: dict[str, Outcome] = {}
    while pending:
      ready, _ = ray.wait(list(pending), num_returns=1)
      name = pending.pop(ready[0])
      try:
        outcomes[name] = ray.get(ready[0])
      except ray.exceptions.RayError as e:  # the worker died: the run is not finished, its record says where
        outcomes[name] = Outcome(name, False, attempts, 0.0, f"Ray task failed: {str(e).splitlines()[0]}")
      report(outcomes[name])
    return [outcomes[task.name] for task in tasks]
  finally:
    if started_here:
      ray.shutdown()
