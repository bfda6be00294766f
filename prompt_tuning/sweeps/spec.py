"""Sweep files: a gin file naming the base gin files and the axes, expanded to the runs it stands for.

A sweep is a gin file (like every other config of the project, so it is searched in the same folders and its values
are written in the syntax users already know) that binds `sweep` and one scoped `axis` per axis:

    import prompt_tuning.sweeps.spec

    sweep.name = 'demo_scale'
    sweep.gin_files = []                         # every run's gin files, first
    sweep.bindings = ['EVAL_EVERY = 100']        # every run's --gin.X= overrides, first
    sweep.axes = {
      'method': @method/axis(),
      'prompt_length': @prompt_length/axis(),
      'seed': @seed/axis(),
    }
    method/axis.values = {'prompt': ['demo/prompt.gin'], 'model': ['demo/model.gin']}
    method/axis.drops = {'model': ['prompt_length']}  # model tuning has no prompt: no prompt_length in its runs
    prompt_length/axis.binding = 'PROMPT_LENGTH'
    prompt_length/axis.values = [1, 5, 20]
    prompt_length/axis.default = 20
    seed/axis.binding = 'RunConfig.seed'
    seed/axis.values = [0, 1, 2]
    sweep.grids = {'figure1': ['method', 'seed'], 'figure3a': ['prompt_length', 'seed']}

An axis value is a list of gin files (names ending in `.gin`, included after the sweep's) and bindings
(`NAME = VALUE`, given as `--gin.NAME=VALUE` after the sweep's); with `binding`, a plain list of values stands for
`BINDING = value` each. A grid is the product of the axes it names (a tuple of axes inside it is zipped: walked
together, value by value); the axes a grid does not name take their default (the first value unless `default` says);
the axes a value `drops` are left out of its runs. Points that two grids share are one run. Without `grids`, the
sweep is the product of all its axes.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin

from prompt_tuning import gin_config

SWEEP_SCOPE_HINT = "write sweep.axes = {'name': @name/axis(), ...} and name/axis.values = ..."
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of a sweep: labelled values, each a list of gin files and bindings."""

  values: dict[str, tuple[str, ...]]
  default: str
  drops: dict[str, tuple[str, ...]]

  @property
  def labels(self) -> list[str]:
    return list(self.values)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A parsed sweep file."""

  name: str
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  axes: dict[str, Axis]
  grids: dict[str, tuple[Any, ...]]
  seed_axis: str | None
  figure_mean_over: tuple[str, ...]
  metric: str
  metric_goal: str
  source: str


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep: its axis labels, the grids it belongs to, and its gin files and bindings."""

  name: str
  labels: dict[str, str]
  grids: tuple[str, ...]
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]


def _items(axis_name: str, label: str, entry: Any) -> tuple[str, ...]:
  entries = [entry] if isinstance(entry, str) else list(entry)
  for item in entries:
    if not isinstance(item, str) or not (item.endswith(".gin") or "=" in item):
      raise ValueError(
        f"axis {axis_name!r}, value {label!r}: {item!r} is neither a gin file (ending in .gin) nor a binding "
        "(NAME = VALUE); give a list of those, or set the axis's `binding` and list plain values."
      )
  return tuple(entries)


@gin.configurable
def axis(
  values: Sequence[Any] | Mapping[Any, Any] = gin.REQUIRED,
  binding: str | None = None,
  default: Any = None,
  drops: Mapping[Any, Sequence[str]] | None = None,
) -> dict[str, Any]:
  """One sweep axis, as the sweep file writes it (scoped by the axis's name: `seed/axis.values = [0, 1]`).

  Args:
    values: {label: [gin files and bindings]}; or, with `binding`, a list of plain values.
    binding: the gin name each plain value is bound to (`PROMPT_LENGTH`, `RunConfig.seed`).
    default: the label the axis takes in grids that do not vary it (default: the first).
    drops: {label: [axes]}: the axes that do not apply to the runs with this label.
  """
  if values is gin.REQUIRED:
    raise ValueError(f"an axis has no values: {SWEEP_SCOPE_HINT}")
  return {"values": values, "binding": binding, "default": default, "drops": dict(drops or {})}


def _make_axis(name: str, raw: Mapping[str, Any]) -> Axis:
  values, binding = raw["values"], raw["binding"]
  if binding is not None:
    if isinstance(values, Mapping):
      raise ValueError(f"axis {name!r} has a `binding`, so its values must be a plain list, not a dict.")
    entries = {str(v): (f"{binding} = {v!r}",) for v in values}
  elif isinstance(values, Mapping):
    entries = {str(label): _items(name, str(label), entry) for label, entry in values.items()}
  else:
    raise ValueError(f"axis {name!r}: plain values {list(values)!r} need `{name}/axis.binding = 'GIN_NAME'`.")
  if not entries:
    raise ValueError(f"axis {name!r} has no values.")
  if len(entries) != len(values):
    raise ValueError(f"axis {name!r} has two values with the same label: {list(values)!r}.")
  default = str(raw["default"]) if raw["default"] is not None else next(iter(entries))
  if default not in entries:
    raise ValueError(f"axis {name!r}: default {raw['default']!r} is not one of its values {list(entries)}.")
  drops = {str(label): tuple(axes) for label, axes in raw["drops"].items()}
  unknown = [label for label in drops if label not in entries]
  if unknown:
    raise ValueError(f"axis {name!r}: drops names {unknown}, which are not its values {list(entries)}.")
  return Axis(values=entries, default=default, drops=drops)


@gin.configurable
def sweep(
  name: str = gin.REQUIRED,
  axes: Mapping[str, Mapping[str, Any]] = gin.REQUIRED,
  gin_files: Sequence[str] = (),
  bindings: Sequence[str] = (),
  grids: Mapping[str, Sequence[Any]] | None = None,
  seed_axis: str | None = "seed",
  figure_mean_over: Sequence[str] = (),
  metric: str = "eval/accuracy",
  metric_goal: str = "max",
) -> dict[str, Any]:
  """The sweep, as its file binds it.

  Args:
    name: the sweep's name (its default folder: sweeps/NAME).
    axes: {axis name: @name/axis()} in the order run names list them.
    gin_files: the gin files every run includes first (searched like --gin_file's).
    bindings: `NAME = VALUE` overrides every run gets first.
    grids: {grid name: [axis, (zipped, axes), ...]}; default: one grid, the product of every axis.
    seed_axis: the axis the report averages over (mean +- std); None if there is none.
    figure_mean_over: axes the figures average within each seed (e.g. ['task']: the SuperGLUE score).
    metric: the validation metric the report and figures show (a key of the runs' metrics.jsonl).
    metric_goal: 'max' or 'min': what "best" means for `metric`.
  """
  for value, what in ((name, "sweep.name"), (axes, "sweep.axes")):
    if value is gin.REQUIRED:
      raise ValueError(f"the sweep file sets no {what}: {SWEEP_SCOPE_HINT}")
  return {
    "name": name,
    "axes": dict(axes),
    "gin_files": tuple(gin_files),
    "bindings": tuple(bindings),
    "grids": dict(grids) if grids else None,
    "seed_axis": seed_axis,
    "figure_mean_over": tuple(figure_mean_over),
    "metric": metric,
    "metric_goal": metric_goal,
  }


def _check_grids(grids: Mapping[str, Sequence[Any]], axes: Mapping[str, Axis]) -> dict[str, tuple[Any, ...]]:
  checked = {}
  for grid_name, members in grids.items():
    named = [a for m in members for a in ((m,) if isinstance(m, str) else m)]
    unknown = [a for a in named if a not in axes]
    if unknown:
      raise ValueError(f"grid {grid_name!r} names {unknown}, which are not axes of the sweep ({list(axes)}).")
    if len(set(named)) != len(named):
      raise ValueError(f"grid {grid_name!r} names an axis twice: {named}.")
    for member in members:
      if not isinstance(member, str) and len({len(axes[a].values) for a in member}) > 1:
        lengths = {a: len(axes[a].values) for a in member}
        raise ValueError(f"grid {grid_name!r} zips axes of different lengths {lengths}: give them as many values.")
    checked[str(grid_name)] = tuple(m if isinstance(m, str) else tuple(m) for m in members)
  return checked


def parse_sweep(raw: Mapping[str, Any], source: str) -> Sweep:
  """A Sweep from what `sweep()` returned; raises ValueError naming what is wrong in the file."""
  axes = {str(name): _make_axis(str(name), a) for name, a in raw["axes"].items()}
  for axis_name, a in axes.items():
    for label, dropped in a.drops.items():
      unknown = [d for d in dropped if d not in axes or d == axis_name]
      if unknown:
        raise ValueError(f"axis {axis_name!r}, value {label!r} drops {unknown}: not other axes of the sweep.")
  if raw["seed_axis"] is not None and raw["seed_axis"] not in axes and raw["seed_axis"] != "seed":
    raise ValueError(f"sweep.seed_axis {raw['seed_axis']!r} is not an axis of the sweep ({list(axes)}).")
  if raw["seed_axis"] not in axes:
    raw = {**raw, "seed_axis": None}
  unknown = [a for a in raw["figure_mean_over"] if a not in axes]
  if unknown:
    raise ValueError(f"sweep.figure_mean_over names {unknown}, which are not axes of the sweep ({list(axes)}).")
  if raw["metric_goal"] not in ("max", "min"):
    raise ValueError(f"sweep.metric_goal is {raw['metric_goal']!r}; set 'max' or 'min'.")
  grids = _check_grids(raw["grids"] or {"all": tuple(axes)}, axes)
  if not re.fullmatch(r"[A-Za-z0-9._-]+", raw["name"]):
    raise ValueError(f"sweep.name {raw['name']!r} names a folder: use letters, digits, '.', '_' and '-'.")
  return Sweep(
    name=raw["name"],
    gin_files=raw["gin_files"],
    bindings=raw["bindings"],
    axes=axes,
    grids=grids,
    seed_axis=raw["seed_axis"],
    figure_mean_over=raw["figure_mean_over"],
    metric=raw["metric"],
    metric_goal=raw["metric_goal"],
    source=source,
  )


def load_sweep(path: str | Path) -> Sweep:
  """Parses a sweep file (searched like a --gin_file: as given, then in the project's gin and configs folders)."""
  found = _find(path, gin_config.gin_search_paths())
  gin_config.add_gin_search_paths()  # a sweep may `include` another: 'sweeps/demo_scale.gin'
  with gin.config_scope(None):
    gin.clear_config()
    try:
      gin.parse_config_file(str(found))
      raw = sweep()
    except Exception as e:
      if _is_sweep_file(found):
        raise
      raise ValueError(
        f"{found} is not a sweep file: it binds no sweep.* setting (it looks like a run's config). Train it with "
        f"`prompt-tuning train --gin_file={path}`, or list it in a sweep file's sweep.gin_files (docs/sweeps.md). "
        f"(Read as a sweep file: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
      ) from e
    finally:
      gin.clear_config()
  return parse_sweep(raw, str(found))


def _is_sweep_file(path: Path) -> bool:
  """Whether the file binds the sweep or an axis, or imports the sweep module (a sweep may extend another)."""
  text = path.read_text(errors="replace")
  return bool(re.search(r"^\s*(sweep\.|[\w.]+/axis\.|import\s+prompt_tuning\.sweeps)", text, re.MULTILINE))


def _find(path: str | Path, search: Sequence[Path]) -> Path:
  for candidate in [Path(path), *(Path(folder) / path for folder in search)]:
    if candidate.is_file():
      return candidate.resolve()
  where = ", ".join(str(p) for p in search)
  raise FileNotFoundError(f"sweep file {str(path)!r} not found (searched the current folder and {where}).")


def _grid_assignments(grid: tuple[Any, ...], axes: Mapping[str, Axis]):
  """Every {axis: label} a grid varies: the product of its members, a zipped member walked value by value."""
  choices = []
  for member in grid:
    if isinstance(member, str):
      choices.append([{member: label} for label in axes[member].labels])
    else:
      choices.append([dict(zip(member, labels)) for labels in zip(*(axes[a].labels for a in member))])
  for combination in itertools.product(*choices):
    yield {k: v for part in combination for k, v in part.items()}


def run_name(labels: Mapping[str, str]) -> str:
  """The readable folder name of a run: `method=prompt,prompt_length=20,seed=0`."""
  return ",".join(f"{axis_name}={_NAME_UNSAFE.sub('_', label)}" for axis_name, label in labels.items())


def expand(spec: Sweep) -> list[Point]:
  """The runs of a sweep, in grid order, each once."""
  points: dict[str, Point] = {}
  for grid_name, grid in spec.grids.items():
    for varied in _grid_assignments(grid, spec.axes):
      labels = {name: varied.get(name, a.default) for name, a in spec.axes.items()}
      dropped = {d for name, label in labels.items() for d in spec.axes[name].drops.get(label, ())}
      labels = {name: label for name, label in labels.items() if name not in dropped}
      name = run_name(labels)
      if name in points:
        points[name] = dataclasses.replace(points[name], grids=(*points[name].grids, grid_name))
        continue
      items = [item for axis_name, label in labels.items() for item in spec.axes[axis_name].values[label]]
      points[name] = Point(
        name=name,
        labels=labels,
        grids=(grid_name,),
        gin_files=(*spec.gin_files, *(i for i in items if i.endswith(".gin"))),
        bindings=(*spec.bindings, *(i for i in items if not i.endswith(".gin"))),
      )
  return list(points.values())
