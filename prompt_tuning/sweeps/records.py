"""A sweep's folder: one MODEL_DIR per run, with the record of its command line, its attempts and its end.

    SWEEP_DIR/sweep.json                 the sweep file's path and text, and its runs (written by `sweep run`)
    SWEEP_DIR/runs/NAME/                 the run's MODEL_DIR (checkpoints/, metrics.jsonl, tensorboard/: the trainer's)
    SWEEP_DIR/runs/NAME/run.json         its axis labels, grids, gin files, bindings, planned steps and parameters
    SWEEP_DIR/runs/NAME/command.sh       its exact command line, runnable on its own
    SWEEP_DIR/runs/NAME/log.txt          its output (every attempt, appended)
    SWEEP_DIR/runs/NAME/attempts.jsonl   one line per attempt: host, pid, cores, start, end, exit code, error line
    SWEEP_DIR/runs/NAME/running.json     the attempt under way (host, pid), removed when it ends
    SWEEP_DIR/runs/NAME/done.json        written when an attempt exits 0 having reached the planned steps

A run is *done* when done.json exists and its metrics.jsonl reached the planned steps; *running* when running.json
names a live process (on this host; on another host it is trusted); *failed* when its last attempt exited non-zero;
*interrupted* when an attempt started and never ended (its driver was killed); *pending* otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def run_dir(sweep_dir: str | Path, name: str) -> Path:
  return Path(sweep_dir) / RUNS / name


def command_line(point: Point, model_dir: Path, search_paths: Sequence[str], python: str | None = None) -> list[str]:
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


def write_sweep(sweep_dir: Path, spec: Sweep, names: Sequence[str]) -> None:
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


def read_sweep(sweep_dir: str | Path) -> dict[str, Any]:
  path = Path(sweep_dir) / "sweep.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {sweep_dir} is not a sweep folder (`sweep run` makes one).")
  return json.loads(path.read_text())


def write_run(sweep_dir: Path, record: RunRecord) -> Path:
  """Writes run.json and command.sh (a run's record never changes once its folder has a checkpoint)."""
  folder = run_dir(sweep_dir, record.name)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "run.json").write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
  script = "#!/bin/sh\n# The exact command of this run (re-running it resumes from its checkpoints).\nexec "
  (folder / "command.sh").write_text(script + " \\\n  ".join(shlex.quote(c) for c in record.command) + "\n")
  (folder / "command.sh").chmod(0o755)
  return folder


def read_run(folder: Path) -> RunRecord:
  return RunRecord(**json.loads((folder / "run.json").read_text()))


def read_metrics(folder: Path) -> list[dict[str, Any]]:
  """The rows of a run's metrics.jsonl (prompt_tuning.reporting writes them); a torn last line is skipped."""
  path = folder / "metrics.jsonl"
  if not path.is_file():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # the line a killed run was writing
  return rows


def last_step(folder: Path) -> int:
  return max((int(row["step"]) for row in read_metrics(folder)), default=0)


def read_attempts(folder: Path) -> list[dict[str, Any]]:
  path = folder / "attempts.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def is_done(folder: Path, steps: int) -> bool:
  """The run ended well (done.json) and its metrics reached the planned steps."""
  return (folder / "done.json").is_file() and last_step(folder) >= steps


def start_attempt(folder: Path, pid: int, cores: Sequence[int] | None, executor: str) -> dict[str, Any]:
  """Writes running.json: the attempt under way (the run's process id on this host, and which executor ran it)."""
  attempt = {
    "host": socket.gethostname(),
    "pid": pid,
    "cores": list(cores or []),
    "executor": executor,
    "start": time.time(),
  }
  (folder / "running.json").write_text(json.dumps(attempt) + "\n")
  return attempt


def end_attempt(folder: Path, attempt: Mapping[str, Any], returncode: int, error: str | None, steps: int) -> bool:
  """Appends the attempt to attempts.jsonl, writes done.json if it finished; returns whether it did."""
  step = last_step(folder)
  if returncode == 0 and step < steps:
    error = f"exited 0 at step {step} of {steps} (stop_after?): not finished"
  ended = {**attempt, "end": time.time(), "returncode": returncode, "step": step, "error": error}
  with open(folder / "attempts.jsonl", "a") as f:
    f.write(json.dumps(ended) + "\n")
  (folder / "running.json").unlink(missing_ok=True)
  finished = returncode == 0 and step >= steps
  if finished:
    (folder / "done.json").write_text(json.dumps({"step": step, "end": ended["end"]}) + "\n")
  return finished


def _alive(attempt: Mapping[str, Any]) -> bool:
  if attempt.get("host") != socket.gethostname():
    return True  # another machine's run (Ray): trust its record
  try:
    os.kill(int(attempt["pid"]), 0)
  except (ProcessLookupError, PermissionError):
    return False
  return True


def run_status(folder: Path) -> RunStatus:
  """The state of one run folder (see the module's docstring)."""
  record = read_run(folder)
  attempts = read_attempts(folder)
  step = last_step(folder)
  running = folder / "running.json"
  if is_done(folder, record.steps):
    state, error = "done", None
  elif running.is_file() and _alive(json.loads(running.read_text())):
    state, error = "running", None
  elif running.is_file():
    state, error = "interrupted", "its sweep driver stopped mid-run; `sweep run` resumes it from its checkpoint"
  elif attempts:
    state, error = "failed", attempts[-1]["error"]
  else:
    state, error = "pending", None
  return RunStatus(record.name, state, step, record.steps, len(attempts), error)


def sweep_status(sweep_dir: str | Path) -> list[RunStatus]:
  """Every run's state, in the sweep's order."""
  names = read_sweep(sweep_dir)["runs"]
  return [run_status(run_dir(sweep_dir, name)) for name in names]


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


def error_line(log_text: str) -> str | None:
  """The line that says why a run failed: the CLI's `error: ...` line (without the prefix), else the last line of a
  traceback."""
  lines = [line.strip() for line in log_text.splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith("error:"):
      return line.removeprefix("error:").strip()
  for line in reversed(lines):
    if "Error" in line or "Killed" in line or "Exception" in line:
      return line[:500]
  return lines[-1][:500] if lines else None
