"""A sweep's runs, checked and sized before anything starts: each run's gin config is parsed here, in this process.

Parsing every run's gin files and overrides up front turns a typo in one corner of a grid (an unknown gin file or
binding, a macro that nothing reads, a value of the wrong type) into one error before the first run starts, not a
failure an hour in (and three attempts of it). It also gives each run its planned steps (`train.num_train_steps`,
which says when the run is finished) and its trainable and total parameter counts (`prompt_tuning.train.plan`,
computed abstractly: nothing is read or allocated).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import gin

from prompt_tuning import gin_config, validation
from prompt_tuning.sweeps import records
from prompt_tuning.sweeps.spec import Point, Sweep

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """A run's record, with why its parameters could not be counted (if so)."""

  record: records.RunRecord
  note: str | None


def with_overrides(points: Sequence[Point], overrides: Sequence[str]) -> list[Point]:
  """The points with `NAME = VALUE` overrides (from the command line) after their own bindings."""
  return [dataclasses.replace(p, bindings=(*p.bindings, *overrides)) for p in points]


def search_paths(spec: Sweep) -> list[str]:
  """The sweep file's folder, searched for the gin files it names, unless it is inside the project's gin folders
  (configs/sweeps/ names its files from configs/ and gin/, which are always searched)."""
  folder = Path(spec.source).parent.resolve()
  if any(folder.is_relative_to(path.resolve()) for path in gin_config.gin_search_paths()):
    return []
  return [str(folder)]


def _macro_value(name: str):
  value = gin.query_parameter(name)
  if isinstance(value, gin.config.ConfigurableReference):
    if str(value).startswith("%"):
      return _macro_value(str(value))
    # `@fn()`: what the run itself will get (e.g. train.num_train_steps = @prompt_tuning.reference.train_steps()).
    return value.scoped_configurable_fn() if value.evaluate else value
  return value


def _counts() -> tuple[int | None, int | None, str | None]:
  from prompt_tuning import train

  try:
    config = train.RunConfig()
    validation.check_run_config(config)
    planned = train.plan(config)
  except validation.SettingError:
    raise  # a setting the run itself would refuse at start-up: refused here, before anything starts
  except Exception as e:  # noqa: BLE001 - counts are informative; the run itself reports its own errors
    return None, None, f"parameters not counted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return planned["trainable_count"], planned["total_count"], None


def plan_run(point: Point, sweep_dir: Path, paths: Sequence[str], counted: dict | None = None, seed_items=()):
  """Parses one run's config (raising ValueError naming the run on a bad file or binding) and sizes it.

  `counted` caches parameter counts across runs that differ only in `seed_items` (the seed axis's bindings).
  """
  model_dirs = [b for b in point.bindings if gin_config.macro_key(b) == "MODEL_DIR"]
  if model_dirs:  # it would come before the run's own MODEL_DIR on its command line, and be overridden
    raise ValueError(
      f"run {point.name}: {model_dirs[0]!r} (in the sweep file or a --gin override): a sweep's runs each train in "
      "their own folder, SWEEP_DIR/runs/NAME; give --sweep_dir DIR for where the sweep goes, not MODEL_DIR."
    )
  folder = records.run_dir(sweep_dir, point.name)
  command = records.command_line(point, folder, paths)
  bindings, _ = gin_config.split_gin_flags([c for c in command if c.startswith("--gin.")])
  gin.clear_config()
  try:
    gin_config.configure_gin(list(point.gin_files), bindings, list(paths), check_unread=True)
    steps = _macro_value("train.num_train_steps")
    validation.require_int(steps, "TRAIN_STEPS (train.num_train_steps)", minimum=1)
    key = (point.gin_files, tuple(b for b in point.bindings if b not in seed_items))
    if counted is None or key not in counted:
      counts = _counts()
      if counted is not None:
        counted[key] = counts
    trainable, total, note = counts if counted is None else counted[key]
  except Exception as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    refused = isinstance(e, (validation.SettingError, gin_config.UnreadSettingError))
    verb = "is refused" if refused else "does not parse"
    raise ValueError(f"run {point.name}: its gin config {verb}: {type(e).__name__}: {first}") from e
  finally:
    gin.clear_config()
  record = records.RunRecord(
    name=point.name,
    labels=dict(point.labels),
    grids=list(point.grids),
    gin_files=list(point.gin_files),
    bindings=list(point.bindings),
    command=command,
    steps=steps,
    trainable_parameters=trainable,
    total_parameters=total,
  )
  return PlannedRun(record, note)


def plan_sweep(spec: Sweep, points: Sequence[Point], sweep_dir: Path) -> list[PlannedRun]:
  """Every run planned, in order (raises on the first run whose config does not parse)."""
  seed_axis = spec.axes.get(spec.seed_axis) if spec.seed_axis else None
  seed_items = {item for items in seed_axis.values.values() for item in items} if seed_axis else set()
  counted: dict = {}
  return [plan_run(p, sweep_dir, search_paths(spec), counted, seed_items) for p in points]


def format_plan(planned: Sequence[PlannedRun], sweep_dir: Path) -> str:
  """One line per run: steps, trainable / total parameters, name; then the totals."""
  lines = [f"{'steps':>7}  {'trainable':>13}  {'total':>13}  run (under {sweep_dir / records.RUNS})"]
  for p in planned:
    r = p.record
    trainable = f"{r.trainable_parameters:,}" if r.trainable_parameters is not None else "?"
    total = f"{r.total_parameters:,}" if r.total_parameters is not None else "?"
    lines.append(f"{r.steps:>7}  {trainable:>13}  {total:>13}  {r.name}")
    if p.note:
      lines.append(f"{'':>7}  {p.note}")
  steps = sum(p.record.steps for p in planned)
  lines.append(f"{len(planned)} runs, {steps:,} training steps in all")
  return "\n".join(lines)
