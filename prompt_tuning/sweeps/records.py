"""A sweep's folder: one MODEL_DIR per run, with the record of its command line, its attempts and its end.

    SWEEP_DIR/sweep.json                 the sweep file's path and text, and its runs (written by `sweep run`)
    SWEEP_DIR/runs/NAME/                 the run's MODEL_DIR (checkpoints/, metrics.jsonl, tensorboard/: the trainer's)
    SWEEP_DIR/runs/NAME/run.json         its axis labels, grids, gin files, bindings, planned steps and parameters
    SWEEP_DIR/runs/NAME/command.sh       its exact command line, runnable on its own
    SWEEP_DIR/runs/NAME/log.txt          its output (every attempt, appended)
    SWEEP_DIR/runs/NAME/attempts.jsonl   one line per attempt: host, pid, cores, start, end, exit code, error line
    SWEEP_DIR/runs/NAME/running.json     the attempt under way (host, pid), removed when it ends
    SWEEP_DIR/runs/NAME/done.json        written when an attempt exits 0 having reached the planned steps

A run is *done* when done.json exists and it reached the planned steps (its metrics.jsonl's last row or its newest
checkpoint); *running* when running.json names a live process (on this host: the same PID *and* the same process start
time, so a PID reused after a reboot does not count; on another host it is trusted); *failed* when its last attempt
exited non-zero; *interrupted* when its last attempt was stopped by Ctrl-C, or started and never ended (its driver was
killed); *pending* otherwise.

A sweep folder may be a Cloud Storage folder (gs://bucket/sweep): every file above is then an object read and
written through `prompt_tuning.storage` (the same layer a gs:// MODEL_DIR uses), a .jsonl file is appended by writing
it again whole, and log.txt is written locally while an attempt runs and appended to the bucket when it ends.

Every file here may be damaged or missing (a disk filled up, a user deleted a run's folder): each reader names the
file and what to do, a torn last line of a .jsonl file is skipped, and `sweep run` writes sweep.json, run.json and
command.sh again from the sweep file. Paths are compared relative to the sweep folder, so a sweep folder may be moved
or copied and then continued.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prompt_tuning import storage
from prompt_tuning.sweeps.spec import Point, Sweep

RUNS = "runs"
STATES = ("done", "running", "failed", "interrupted", "pending")


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What run.json holds: enough to rerun, report and plot the run without the sweep file."""

  name: str
  labels: dict[str, str]
  grids: list[str]
  gin_files: list[str]
  bindings: list[str]
  command: list[str]
  steps: int
  trainable_parameters: int | None
  total_parameters: int | None


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """A run's state as its folder shows it."""

  name: str
  state: str
  step: int
  steps: int
  attempts: int
  error: str | None


def run_dir(sweep_dir: str | os.PathLike, name: str) -> Any:
  """SWEEP_DIR/runs/NAME: a pathlib.Path, or an epath.Path for a gs:// sweep folder (`storage.path`)."""
  return storage.path(sweep_dir) / RUNS / name


def command_line(point: Point, model_dir: Any, search_paths: Sequence[str], python: str | None = None) -> list[str]:
  """The ordinary training command of a run: its gin files, then its overrides, then its MODEL_DIR."""
  command = [python or sys.executable, "-m", "prompt_tuning.cli", "train"]
  command += [f"--gin_file={f}" for f in point.gin_files]
  if search_paths:
    command.append(f"--gin_search_paths={','.join(search_paths)}")
  for binding in point.bindings:
    name, value = (part.strip() for part in binding.split("=", 1))
    command.append(f"--gin.{name}={value}")
  command.append(f"--gin.MODEL_DIR={str(model_dir)!r}")
  return command


def portable_command(command: Sequence[str]) -> list[str]:
  """A run's command line with its interpreter left out and its sweep folder written as `$SWEEP_DIR` (the folder
  is the MODEL_DIR's grandparent, runs/NAME), so the same run in a moved or copied sweep folder compares equal."""
  import ast

  model_dir = next((c for c in reversed(command) if c.startswith("--gin.MODEL_DIR=")), None)
  if model_dir is None:
    return list(command[1:])
  try:
    folder = str(storage.path(ast.literal_eval(model_dir.split("=", 1)[1])).parent.parent)
  except (ValueError, SyntaxError, storage.StorageError):
    return list(command[1:])
  return [c.replace(folder, "$SWEEP_DIR") for c in command[1:]]


def write_sweep(sweep_dir: Any, spec: Sweep, names: Sequence[str]) -> None:
  """SWEEP_DIR/sweep.json: the sweep file (path and text) and the names of its runs."""
  sweep_dir.mkdir(parents=True, exist_ok=True)
  record = {
    "name": spec.name,
    "source": spec.source,
    "text": Path(spec.source).read_text(),
    "axes": {name: {"labels": a.labels, "default": a.default} for name, a in spec.axes.items()},
    "seed_axis": spec.seed_axis,
    "figure_mean_over": list(spec.figure_mean_over),
    "metric": spec.metric,
    "metric_goal": spec.metric_goal,
    "runs": list(names),
  }
  (sweep_dir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")


class SweepStateError(ValueError):
  """A damaged file in a sweep folder; the message names it and says how to go on."""


def _read_json(path: Any, way_on: str) -> Any:
  """The JSON object in `path`; a damaged one raises SweepStateError naming it and `way_on`."""
  try:
    value = json.loads(path.read_bytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SweepStateError(f"{path} is damaged ({type(e).__name__}: {e}): {way_on}") from None
  if not isinstance(value, dict):
    raise SweepStateError(f"{path} is damaged (it holds a {type(value).__name__}, not a JSON object): {way_on}")
  return value


def _json_lines(path: Any) -> list[dict[str, Any]]:
  """The JSON objects of a .jsonl file, one a line; a line that is not one (torn by a kill, or not UTF-8) is
  skipped."""
  if not path.is_file():
    return []
  rows = []
  for line in path.read_bytes().splitlines():
    try:
      row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      continue  # the line a killed run was writing, or bytes that are not ours
    if isinstance(row, dict):
      rows.append(row)
  return rows


def read_sweep(sweep_dir: str | os.PathLike) -> dict[str, Any]:
  """sweep.json of a sweep folder.

  Raises:
    FileNotFoundError: the folder is not a sweep folder.
    SweepStateError: sweep.json is damaged (`sweep run SWEEP.gin --sweep_dir DIR` writes it again).
  """
  path = storage.path(sweep_dir) / "sweep.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {sweep_dir} is not a sweep folder (`sweep run` makes one).")
  way_on = f"`prompt-tuning sweep run SWEEP.gin --sweep_dir {sweep_dir}` writes it again from the sweep file."
  record = _read_json(path, way_on)
  if not isinstance(record.get("runs"), list):
    raise SweepStateError(f"{path} is damaged (it lists no runs): {way_on}")
  return record


def write_run(sweep_dir: Any, record: RunRecord) -> Any:
  """Writes run.json and command.sh (a run's record never changes once its folder has a checkpoint)."""
  folder = run_dir(sweep_dir, record.name)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "run.json").write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
  script = "#!/bin/sh\n# The exact command of this run (re-running it resumes from its checkpoints).\nexec "
  (folder / "command.sh").write_text(script + " \\\n  ".join(shlex.quote(c) for c in record.command) + "\n")
  if not storage.is_remote(folder):  # an object has no mode bits: `sh command.sh` runs it
    (folder / "command.sh").chmod(0o755)
  return folder


def read_run(folder: Any) -> RunRecord:
  """run.json of a run folder.

  Raises:
    FileNotFoundError: the run's folder (or its run.json) is missing.
    SweepStateError: run.json is damaged (`sweep run` writes it again from the sweep file).
  """
  path = folder / "run.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: `sweep run` writes it again from the sweep file.")
  way_on = (
    f"`prompt-tuning sweep run SWEEP.gin --sweep_dir {folder.parent.parent}` writes it again from the sweep file."
  )
  raw = _read_json(path, way_on)
  try:
    return RunRecord(**raw)
  except TypeError as e:
    raise SweepStateError(f"{path} is damaged ({e}): {way_on}") from None


def read_metrics(folder: Any) -> list[dict[str, Any]]:
  """The rows of a run's metrics.jsonl (prompt_tuning.reporting writes them); a torn or non-UTF-8 line is skipped."""
  return [row for row in _json_lines(folder / "metrics.jsonl") if isinstance(row.get("step"), int)]


def last_step(folder: Any) -> int:
  """The step the run has reached: its last metrics row's, or its newest checkpoint's if metrics lost rows."""
  from prompt_tuning import validation

  logged = max((int(row["step"]) for row in read_metrics(folder)), default=0)
  return max(logged, validation.newest_checkpoint_step(folder) or 0)


def read_attempts(folder: Any) -> list[dict[str, Any]]:
  """The attempts.jsonl records of a run, oldest first (a torn last line is skipped)."""
  return _json_lines(folder / "attempts.jsonl")


def is_done(folder: Any, steps: int) -> bool:
  """The run ended well (done.json) and reached the planned steps."""
  return (folder / "done.json").is_file() and last_step(folder) >= steps


def process_start_time(pid: int) -> str | None:
  """When process `pid` started, as the kernel counts it (boot id and clock ticks since boot): a PID reused by
  another process has another start time. None where /proc does not say (not Linux, or no such process)."""
  try:
    stat = Path(f"/proc/{pid}/stat").read_text()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
  return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def start_attempt(folder: Any, pid: int, cores: Sequence[int] | None, executor: str) -> dict[str, Any]:
  """Writes running.json: the attempt under way (the run's process id and start time on this host, and which
  executor ran it)."""
  attempt = {
    "host": socket.gethostname(),
    "pid": pid,
    "pid_start": process_start_time(pid),
    "cores": list(cores or []),
    "executor": executor,
    "start": time.time(),
  }
  (folder / "running.json").write_text(json.dumps(attempt) + "\n")
  return attempt


# How a run ends when it was interrupted (Ctrl-C): the CLI exits 130; a process killed by SIGINT itself, -2.
INTERRUPTED_RETURNCODES = (130, -signal.SIGINT)


def end_attempt(folder: Any, attempt: Mapping[str, Any], returncode: int, error: str | None, steps: int) -> bool:
  """Appends the attempt to attempts.jsonl, writes done.json if it finished; returns whether it did."""
  step = last_step(folder)
  interrupted = returncode in INTERRUPTED_RETURNCODES
  if returncode == 0 and step < steps:
    error = f"exited 0 at step {step} of {steps} (stop_after?): not finished"
  elif interrupted:
    error = f"interrupted (Ctrl-C) at step {step}; `sweep run` resumes it from its last checkpoint"
  ended = {**attempt, "end": time.time(), "returncode": returncode, "step": step, "error": error}
  if interrupted:
    ended["interrupted"] = True
  line = json.dumps(ended) + "\n"
  if storage.is_remote(folder):
    path = folder / "attempts.jsonl"  # an object has no append: written again whole, a torn last line ended
    before = path.read_bytes() if path.is_file() else b""
    storage.write_bytes(path, before + (b"\n" if before and not before.endswith(b"\n") else b"") + line.encode())
  else:
    with open(folder / "attempts.jsonl", "ab") as f:
      f.seek(0, os.SEEK_END)
      if f.tell() and _ends_torn(folder / "attempts.jsonl"):
        f.write(b"\n")  # a torn last line stays one line of its own, and this record another
      f.write(line.encode())
  (folder / "running.json").unlink(missing_ok=True)
  finished = returncode == 0 and step >= steps
  if finished:
    (folder / "done.json").write_text(json.dumps({"step": step, "end": ended["end"]}) + "\n")
  return finished


def _ends_torn(path: Path) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


def _alive(attempt: Mapping[str, Any], driver_holds_lock: bool = False) -> bool:
  """Whether the attempt's process still runs. On this host: its PID with the start time recorded (a reused PID is
  another process); and none does while this driver holds the sweep folder's lock (no other driver can run it)."""
  if "host" not in attempt:
    return False  # a damaged record: nothing can be known alive from it
  if attempt.get("host") != socket.gethostname():
    return True  # another machine's run (Ray): trust its record
  if driver_holds_lock:
    return False
  try:
    pid = int(attempt["pid"])
    os.kill(pid, 0)
  except (KeyError, TypeError, ValueError, ProcessLookupError, PermissionError):
    return False
  recorded = attempt.get("pid_start")
  return recorded is None or recorded == process_start_time(pid)


def _running_attempt(folder: Any) -> dict[str, Any] | None:
  """running.json's record; a damaged one counts as an attempt that never ended (nothing can be alive in it)."""
  path = folder / "running.json"
  if not path.is_file():
    return None
  try:
    return _read_json(path, "")
  except SweepStateError:
    return {}


def run_status(folder: Any, driver_holds_lock: bool = False) -> RunStatus:
  """The state of one run folder (see the module's docstring); a missing folder is pending, a damaged run.json is
  shown with what to do (the run's state cannot be known without it).

  Args:
    folder: the run's folder.
    driver_holds_lock: this process holds the sweep folder's lock (`sweep run`): a running.json of this host is
      left over from a driver that died.
  """
  name = folder.name
  if not (folder / "run.json").is_file():
    return RunStatus(name, "pending", 0, 0, 0, f"{folder} is missing; `sweep run` starts this run again")
  try:
    record = read_run(folder)
  except SweepStateError as e:
    return RunStatus(name, "pending", last_step(folder), 0, len(read_attempts(folder)), str(e))
  attempts = read_attempts(folder)
  step = last_step(folder)
  running = _running_attempt(folder)
  if is_done(folder, record.steps):
    state, error = "done", None
  elif running is not None and _alive(running, driver_holds_lock):
    state, error = "running", None
  elif running is not None:
    state, error = "interrupted", "its sweep driver stopped mid-run; `sweep run` resumes it from its checkpoint"
  elif attempts and attempts[-1].get("interrupted"):
    state, error = "interrupted", attempts[-1].get("error")
  elif attempts:
    state, error = "failed", attempts[-1].get("error")
  else:
    state, error = "pending", None
  return RunStatus(record.name, state, step, record.steps, len(attempts), error)


def sweep_status(sweep_dir: str | os.PathLike, driver_holds_lock: bool = False) -> list[RunStatus]:
  """Every run's state, in the sweep's order."""
  names = read_sweep(sweep_dir)["runs"]
  return [run_status(run_dir(sweep_dir, name), driver_holds_lock) for name in names]


def format_status(statuses: Sequence[RunStatus]) -> str:
  """One line per run, then the counts: `done 3  running 1  failed 1 ...`."""
  lines = []
  for s in statuses:
    line = f"{s.state:<11} {s.step:>6}/{s.steps:<6} {s.name}"
    if s.attempts > 1:
      line += f"  ({s.attempts} attempts)"
    if s.error:
      line += f"\n{'':<11} error: {s.error}"
    lines.append(line)
  counts = {state: sum(s.state == state for s in statuses) for state in STATES}
  lines.append("  ".join(f"{state} {count}" for state, count in counts.items()))
  return "\n".join(lines)


# A line of TensorFlow's or absl's own log ("W0000 00:00:1796548188.2 12345 cache_dataset_ops.cc:912] ..."): never
# the reason a run failed, though it may be the last line a run printed.
_NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:")


def error_line(log_text: str) -> str | None:
  """The line that says why a run failed: the CLI's `error: ...` line (without the prefix), else the last line of a
  traceback, else the last line that is not TensorFlow's or absl's own log."""
  lines = [line.strip() for line in log_text.splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith("error:"):
      return line.removeprefix("error:").strip()
  lines = [line for line in lines if not _NATIVE_LOG_LINE.match(line)]
  for line in reversed(lines):
    if "Error" in line or "Killed" in line or "Exception" in line:
      return line[:500]
  return lines[-1][:500] if lines else None
