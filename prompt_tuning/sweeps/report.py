"""`sweep report`: every run's final and best validation metric in one table, the paper's figures, TensorBoard hparams.

    SWEEP_DIR/report/results.csv      one row per group of runs that differ only in the seed axis (numbers in full)
    SWEEP_DIR/report/results.md       the same, formatted: mean +- std over seeds
    SWEEP_DIR/report/runs.csv         one row per run
    SWEEP_DIR/report/fig1_size.png    score vs model size (total parameters, log x), a line per method (Figure 1)
    SWEEP_DIR/report/fig3a_prompt_length.png   score vs prompt length (log x), a line per size (Figure 3a)
    SWEEP_DIR/report/fig3b_init.png   score vs prompt initializer, a line per size (Figure 3b)
    SWEEP_DIR/report/fig3c_objective.png   score vs model size, a line per pretraining objective (Figure 3c)
    SWEEP_DIR/tensorboard/            TensorBoard's HParams dashboard: each run's axis labels and metrics

The figures follow axis names: `size`, `method`, `prompt_length`, `init`, `objective` (and the sweep's seed axis,
averaged over). A figure is drawn when the sweep has its axes, from the runs whose other axes are at their defaults
(the grid that varies its axes); error bars are the std over seeds. "Final" is the metric's last value, "best" its
best over the run's evaluations (`sweep.metric_goal`).

A gs:// sweep folder is read from the bucket, and its report written into a local temporary folder (matplotlib,
the csv module and TensorBoard's writer write local files) and then uploaded to SWEEP_DIR/report/ and
SWEEP_DIR/tensorboard/ (the latter replaced whole, as a local one is).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prompt_tuning import storage
from prompt_tuning.sweeps import records

FIGURES = {
  "fig1_size": ("size", "method"),
  "fig3a_prompt_length": ("prompt_length", "size"),
  "fig3b_init": ("init", "size"),
  "fig3c_objective": ("size", "objective"),
}


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One run's numbers."""

  name: str
  labels: dict[str, str]
  state: str
  final: float | None
  best: float | None
  steps: int
  wall_seconds: float
  trainable_parameters: int | None
  total_parameters: int | None


@dataclasses.dataclass(frozen=True)
class GroupResult:
  """The runs that differ only in their seed: mean and std of their numbers."""

  labels: dict[str, str]
  runs: int
  done: int
  final_mean: float | None
  final_std: float | None
  best_mean: float | None
  best_std: float | None
  steps: int
  wall_seconds: float
  trainable_parameters: int | None
  total_parameters: int | None


def run_result(folder: Any, metric: str, goal: str) -> RunResult:
  """A run's final and best `metric`, steps, wall time (all attempts) and parameter counts."""
  record = records.read_run(folder)
  values = [float(row[metric]) for row in records.read_metrics(folder) if metric in row]
  pick = max if goal == "max" else min
  wall = sum(a["end"] - a["start"] for a in records.read_attempts(folder))
  return RunResult(
    name=record.name,
    labels=record.labels,
    state=records.run_status(folder).state,
    final=values[-1] if values else None,
    best=pick(values) if values else None,
    steps=records.last_step(folder),
    wall_seconds=wall,
    trainable_parameters=record.trainable_parameters,
    total_parameters=record.total_parameters,
  )


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  if not values:
    return None, None
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_results(results: Sequence[RunResult], seed_axis: str | None) -> list[GroupResult]:
  """Runs grouped by their labels apart from the seed axis, in first-seen order."""
  groups: dict[tuple, list[RunResult]] = {}
  for r in results:
    key = tuple((k, v) for k, v in r.labels.items() if k != seed_axis)
    groups.setdefault(key, []).append(r)
  grouped = []
  for key, members in groups.items():
    final = _mean_std([m.final for m in members if m.final is not None])
    best = _mean_std([m.best for m in members if m.best is not None])
    grouped.append(
      GroupResult(
        labels=dict(key),
        runs=len(members),
        done=sum(m.state == "done" for m in members),
        final_mean=final[0],
        final_std=final[1],
        best_mean=best[0],
        best_std=best[1],
        steps=max(m.steps for m in members),
        wall_seconds=statistics.fmean(m.wall_seconds for m in members),
        trainable_parameters=members[0].trainable_parameters,
        total_parameters=members[0].total_parameters,
      )
    )
  return grouped


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "-"
  return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _count(n: int | None) -> str:
  return "-" if n is None else f"{n:,}"


def markdown_table(groups: Sequence[GroupResult], axes: Sequence[str], metric: str) -> str:
  """The table, one line per group: axis labels, seeds, final and best (mean ± std), parameters, steps, time."""
  header = [*axes, "runs", f"final {metric}", f"best {metric}", "trainable params", "total params", "steps", "wall s"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for g in groups:
    cells = [g.labels.get(a, "-") for a in axes]
    runs = str(g.runs) if g.done == g.runs else f"{g.runs} ({g.done} done)"
    cells += [runs, _cell(g.final_mean, g.final_std), _cell(g.best_mean, g.best_std)]
    cells += [_count(g.trainable_parameters), _count(g.total_parameters), str(g.steps), f"{g.wall_seconds:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run"])
    writer.writeheader()
    writer.writerows(rows)


def figure_points(results: Sequence[RunResult], x_axis: str, line_axis: str, sweep: Mapping[str, Any]):
  """{line label: [(x label, mean, std)]}: each seed's final metric (averaged over `figure_mean_over` axes), then
  mean and std over seeds; only runs whose other axes are at their defaults."""
  axes, seed_axis = sweep["axes"], sweep["seed_axis"]
  free = {x_axis, line_axis, seed_axis, *sweep.get("figure_mean_over", ())}
  per_seed: dict[tuple[str, str, str | None], list[float]] = {}
  for r in results:
    if r.final is None or x_axis not in r.labels or line_axis not in r.labels:
      continue
    if any(label != axes[name]["default"] for name, label in r.labels.items() if name not in free):
      continue
    key = (r.labels[line_axis], r.labels[x_axis], r.labels.get(seed_axis))
    per_seed.setdefault(key, []).append(r.final)
  scores: dict[tuple[str, str], list[float]] = {}
  for (line, x, _), finals in per_seed.items():
    scores.setdefault((line, x), []).append(statistics.fmean(finals))
  lines: dict[str, list[tuple[str, float, float]]] = {}
  for line in axes[line_axis]["labels"]:
    for x in axes[x_axis]["labels"]:
      if (line, x) in scores:
        mean, std = _mean_std(scores[(line, x)])
        lines.setdefault(line, []).append((x, mean, std or 0.0))
  return lines


def _x_positions(x_axis: str, results: Sequence[RunResult], labels: Sequence[str]) -> dict[str, float]:
  """Where each label sits on the x axis: total parameters (size), tokens (prompt_length), else its index."""
  if x_axis == "size":
    totals: dict[str, int] = {}
    for r in results:
      if "size" in r.labels and r.total_parameters:
        totals[r.labels["size"]] = min(totals.get(r.labels["size"], r.total_parameters), r.total_parameters)
    return {label: float(total) for label, total in totals.items()}
  if x_axis == "prompt_length":
    return {label: float(label) for label in labels}
  return {label: float(i) for i, label in enumerate(labels)}


def draw_figure(path: Path, x_axis: str, line_axis: str, results, sweep: Mapping[str, Any]) -> bool:
  """Score vs `x_axis`, a line per label of `line_axis`; False (nothing drawn) when the sweep lacks the axes."""
  axes = sweep["axes"]
  if x_axis not in axes or line_axis not in axes:
    return False
  lines = figure_points(results, x_axis, line_axis, sweep)
  x_labels = axes[x_axis]["labels"]
  positions = _x_positions(x_axis, results, x_labels)
  if not any(x in positions for points in lines.values() for x, _, _ in points):
    return False
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("`sweep report` draws its figures with matplotlib: pip install 'prompt_tuning[sweeps]'.") from e

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  figure, ax = plt.subplots(figsize=(6, 4))
  for line, points in lines.items():
    placed = sorted((positions[x], mean, std) for x, mean, std in points if x in positions)
    if placed:
      xs, ys, errs = zip(*placed)
      ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"{line_axis}={line}")
  if x_axis == "size":
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
  elif x_axis == "prompt_length":
    ax.set_xscale("log")
    ax.set_xlabel("prompt length (tokens)")
  else:
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_xlabel(x_axis)
  averaged = ", ".join(sweep.get("figure_mean_over", ()))
  ax.set_ylabel(f"validation {sweep['metric']}" + (f" (mean over {averaged})" if averaged else ""))
  ax.set_title(f"{sweep['name']}: vs {x_axis}, mean ± std over {sweep['seed_axis'] or 'one run'}")
  ax.grid(True, alpha=0.3)
  ax.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return True


def write_hparams(sweep_dir: Path, results: Sequence[RunResult], sweep: Mapping[str, Any]) -> Path:
  """TensorBoard's HParams dashboard, in the local folder SWEEP_DIR/tensorboard: one session per run (its axis
  labels), its final and best metric."""
  import tensorflow as tf
  from tensorboard.plugins.hparams import api as hp

  folder = sweep_dir / "tensorboard"
  shutil.rmtree(folder, ignore_errors=True)  # written whole each time: one hparams session per run
  params = {name: hp.HParam(name, hp.Discrete(info["labels"])) for name, info in sweep["axes"].items()}
  final_tag, best_tag = f"final/{sweep['metric']}", f"best/{sweep['metric']}"
  with tf.summary.create_file_writer(str(folder)).as_default():
    hp.hparams_config(
      hparams=list(params.values()),
      metrics=[hp.Metric(final_tag, display_name=f"final {sweep['metric']}"), hp.Metric(best_tag)],
    )
  for r in results:
    if r.final is None:
      continue
    with tf.summary.create_file_writer(str(folder / r.name)).as_default():
      hp.hparams({params[k]: v for k, v in r.labels.items()}, trial_id=r.name)
      tf.summary.scalar(final_tag, r.final, step=r.steps)
      tf.summary.scalar(best_tag, r.best, step=r.steps)
  return folder


def _not_done_note(results: Sequence[RunResult], unreadable: Sequence[str]) -> str:
  """What the table does not show: the runs that are not done (their rows hold the runs that are, and the parameter
  counts planned for them), and the runs whose record could not be read."""
  lines = []
  not_done = [r for r in results if r.state != "done"]
  if not_done:
    by_state = "; ".join(
      f"{state}: {', '.join(r.name for r in not_done if r.state == state)}"
      for state in records.STATES
      if any(r.state == state for r in not_done)
    )
    lines.append(
      f"**{len(not_done)} of {len(results)} runs are not done** ({by_state}): a row's numbers come from its runs that "
      "have them, and its parameter counts are the planned ones. `prompt-tuning sweep status` says why; `sweep run` "
      "continues them."
    )
  if unreadable:
    lines.append(f"**{len(unreadable)} runs left out**, their records unreadable: {'; '.join(unreadable)}")
  return "".join(line + "\n\n" for line in lines)


def write_report(sweep_dir: str | Path) -> dict[str, Any]:
  """Writes the tables, figures and hparams of a sweep folder (local or gs://); returns what was written, by kind
  (paths in the sweep folder: pathlib.Path, or epath.Path on gs://)."""
  sweep_dir = storage.path(sweep_dir)
  if not storage.is_remote(sweep_dir):
    return _write_report(sweep_dir, sweep_dir)
  with tempfile.TemporaryDirectory(prefix="sweep-report-") as staging:
    written = _write_report(sweep_dir, Path(staging))
    storage.upload_folder(Path(staging) / "report", sweep_dir / "report")
    if "tensorboard" in written:
      storage.rmtree(sweep_dir / "tensorboard")  # written whole each time, as a local one is
      storage.upload_folder(written["tensorboard"], sweep_dir / "tensorboard")
    return {what: sweep_dir / path.relative_to(staging).as_posix() for what, path in written.items()}


def _write_report(sweep_dir: Any, out_dir: Path) -> dict[str, Path]:
  """Reads the sweep folder `sweep_dir` and writes its report into the local folder `out_dir` (report/ and
  tensorboard/); returns what was written, by kind."""
  sweep = records.read_sweep(sweep_dir)
  results, unreadable = [], []
  for name in sweep["runs"]:
    try:
      results.append(run_result(records.run_dir(sweep_dir, name), sweep["metric"], sweep["metric_goal"]))
    except (FileNotFoundError, records.SweepStateError) as e:  # a deleted run folder, a damaged run.json
      unreadable.append(f"{name} ({e})")
  seed_axis = sweep["seed_axis"]
  groups = group_results(results, seed_axis)
  axes = [a for a in sweep["axes"] if a != seed_axis]
  out = out_dir / "report"
  out.mkdir(parents=True, exist_ok=True)
  written = {"markdown": out / "results.md", "csv": out / "results.csv", "runs_csv": out / "runs.csv"}
  scored = sum(r.final is not None for r in results)
  title = f"# Sweep {sweep['name']}: validation {sweep['metric']}\n\n"
  note = f"{scored} of {len(results)} runs have the metric; mean ± std over {seed_axis or 'no seed axis'}.\n\n"
  written["markdown"].write_text(
    title + note + _not_done_note(results, unreadable) + markdown_table(groups, axes, sweep["metric"])
  )
  _write_csv(
    written["csv"],
    [
      {**{a: g.labels.get(a, "") for a in axes}, **{k: v for k, v in dataclasses.asdict(g).items() if k != "labels"}}
      for g in groups
    ],
  )
  _write_csv(
    written["runs_csv"],
    [
      {
        "run": r.name,
        **{a: r.labels.get(a, "") for a in sweep["axes"]},
        **{k: v for k, v in dataclasses.asdict(r).items() if k not in ("name", "labels")},
      }
      for r in results
    ],
  )
  for name, (x_axis, line_axis) in FIGURES.items():
    path = out / f"{name}.png"
    if draw_figure(path, x_axis, line_axis, results, sweep):
      written[name] = path
  if any(math.isfinite(r.final) for r in results if r.final is not None):
    written["tensorboard"] = write_hparams(out_dir, results, sweep)
  return written
