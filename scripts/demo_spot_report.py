"""The demo family's transfer experiment (docs/demo_spot.md): single-task prompt tuning, SPoT from the best- and the
worst-ranked source (configs/sweeps/demo_spot.gin) and MPT over the four tasks (configs/sweeps/demo_spot_mpt.gin).

    python scripts/demo_spot_report.py --spot /runs/demo_spot --mpt /runs/demo_spot_mpt --out docs/figures/demo_spot

First scores every finished MPT run on each task alone (`prompt-tuning eval` on the task's task_index_ variant,
validation split, each task scored as its single-task runs are: the class-label softmax for the two yes/no-style
tasks; appended to the run's eval_metrics.jsonl, skipped where it is there already), then writes OUT/results.csv (one
row per run and task), OUT/results.md (the table: mean and min-max over seeds, and the rankings the SPoT runs used)
and OUT/demo_spot.png (the figure). Runs that have not finished are left out and counted in the table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

METRIC = "eval/sequence_accuracy"
TOKEN_METRIC = "eval/accuracy"  # teacher-forced token accuracy: it moves where no whole target is right yet
LOSS_METRIC = "eval/cross_entropy"  # teacher-forced, per target token: it tells apart runs of equal accuracy
METRICS = (METRIC, TOKEN_METRIC, LOSS_METRIC)
# demo_spot.gin's task labels -> (the task's name, whether its runs score with the class-label softmax).
TASKS = {
  "animal_or_plant": ("wordnet_animal_or_plant", True),
  "hypernymy": ("wordnet_hypernymy", True),
  "word_to_category": ("wordnet_word_to_category", False),
  "gloss_to_word": ("wordnet_gloss_to_word", False),
}
ARMS = {"single": "single task", "spot_best": "SPoT, best-ranked source", "spot_worst": "SPoT, worst-ranked source"}
# demo_spot_mpt.gin's factor_init values -> arm: MPT with every task's prompt started at the shared one, and with
# PEFT's draw of the task factors (every task's prompt started near zero).
MPT_ARMS = {"ones": "mpt_ones", "normal": "mpt"}
ARMS_ALL = {**ARMS, "mpt_ones": "MPT, factors from one", "mpt": "MPT, PEFT's factor draw"}
SEEDS = (0, 1, 2)


def _rows(path: Path) -> list[dict]:
  if not path.is_file():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def _done(run: Path) -> bool:
  return (run / "done.json").is_file()


def final_score(run: Path, metric: str = METRIC) -> float | None:
  """The last `metric` of a finished run (train's evaluation at its last step), or None."""
  if not _done(run):
    return None
  scores = [row[metric] for row in _rows(run / "metrics.jsonl") if metric in row]
  return scores[-1] if scores else None


def mpt_task_score(run: Path, task: str, metric: str = METRIC) -> float | None:
  """An MPT run's teacher-forced `metric` on one task alone (its eval_metrics.jsonl, which `prompt-tuning eval` writes
  without the "eval/" prefix), or None."""
  prefix, key = f"task_index_{TASKS[task][0]}/", metric.removeprefix("eval/")
  found = [row[key] for row in _rows(run / "eval_metrics.jsonl") if any(k.startswith(prefix) for k in row)]
  return found[-1] if found else None


def eval_command(run: Path, task: str) -> list[str]:
  """`prompt-tuning eval` with the MPT run's own training flags, on one task's task_index_ variant."""
  command = json.loads((run / "run.json").read_text())["command"]
  at = command.index("train")
  name, class_labels = TASKS[task]
  return [
    sys.executable,
    "-m",
    "prompt_tuning.cli",
    "eval",
    *command[at + 1 :],
    "--gin.MIXTURE_OR_TASK_NAME=@prompt_tuning.demo_data.register_demo_task_index_task()",
    f"--gin.prompt_tuning.demo_data.register_demo_task_index_task.task='{name}'",
    f"--gin.RunConfig.class_label_softmax={class_labels}",
    f"--gin.MODEL_DIR='{run.resolve()}'",  # where the run is now (its record names where it trained)
  ]


def score_mpt_runs(mpt_dir: Path, parallel: int) -> None:
  """Runs the per-task evaluations that are missing, `parallel` at a time; a failed one is reported and skipped."""
  todo = [
    (run, task)
    for run in sorted((mpt_dir / "runs").glob("factor_init=*"))
    if _done(run)
    for task in TASKS
    if mpt_task_score(run, task) is None
  ]

  def one(item):
    run, task = item
    result = subprocess.run(eval_command(run, task), capture_output=True, text=True)
    return run, task, result

  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    for run, task, result in pool.map(one, todo):
      state = "scored" if result.returncode == 0 else f"FAILED ({result.stderr.strip().splitlines()[-1:]})"
      print(f"{run.name} on {task}: {state}", flush=True)


def collect(spot_dir: Path, mpt_dir: Path | None) -> list[dict]:
  """One row per (task, arm, seed): the score, or None where the run has not finished."""
  rows = []
  for task in TASKS:
    for arm in ARMS:
      for seed in SEEDS:
        run = spot_dir / "runs" / f"task={task},init={arm},seed={seed}"
        scores = {
          "score": final_score(run),
          "token_accuracy": final_score(run, TOKEN_METRIC),
          "cross_entropy": final_score(run, LOSS_METRIC),
        }
        rows.append({"task": task, "arm": arm, "seed": seed, **scores, "run": str(run)})
    for init, arm in MPT_ARMS.items():
      for seed in SEEDS:
        run = (mpt_dir / "runs" / f"factor_init={init},seed={seed}") if mpt_dir else None
        scores = {"score": None, "token_accuracy": None, "cross_entropy": None}
        if run is not None:
          scores = {key: mpt_task_score(run, task, metric) for key, metric in zip(scores, METRICS)}
        rows.append({"task": task, "arm": arm, "seed": seed, **scores, "run": str(run)})
  return rows


def rankings(spot_dir: Path) -> list[dict]:
  """The ranking each SPoT run used (MODEL_DIR/transfer_rank/ranking.json), one row per run that wrote one."""
  found = []
  for task in TASKS:
    for arm in ("spot_best", "spot_worst"):
      for seed in SEEDS:
        path = spot_dir / "runs" / f"task={task},init={arm},seed={seed}" / "transfer_rank" / "ranking.json"
        if path.is_file():
          record = json.loads(path.read_text())
          found.append({"task": task, "arm": arm, "seed": seed, **record})
  return found


def _cell(scores: list[float], expected: int) -> str:
  if not scores:
    return "not run"
  text = f"{statistics.mean(scores):.3f} ({min(scores):.3f}-{max(scores):.3f})"
  return text if len(scores) == expected else f"{text}, {len(scores)} of {expected} seeds"


def table(rows: list[dict], key: str = "score") -> str:
  head = "| task | " + " | ".join(ARMS_ALL.values()) + " |"
  lines = [head, "|---|" + "---|" * len(ARMS_ALL)]
  for task in TASKS:
    cells = []
    for arm in ARMS_ALL:
      scores = [r[key] for r in rows if r["task"] == task and r["arm"] == arm and r[key] is not None]
      cells.append(_cell(scores, len(SEEDS)))
    lines.append(f"| {task} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def ranking_table(found: list[dict]) -> str:
  """Per target task: the sources in the order its runs ranked them (average-token cosine), and whether every seed's
  runs used the same ranking (they all rank the seed-0 prompts, so they should)."""
  lines = ["| target task | ranking (average-token cosine with the target's seed-0 prompt) | best | worst | runs |"]
  lines.append("|---|---|---|---|---|")
  for task in TASKS:
    records = [r for r in found if r["task"] == task]
    if not records:
      lines.append(f"| {task} | not run | | | 0 |")
      continue
    orders = {tuple(row["name"] for row in r["ranking"]) for r in records}
    first = records[0]
    metric = first["metric"]
    order = ", ".join(f"{row['name'].removeprefix('wordnet_')} {row[metric]:+.3f}" for row in first["ranking"])
    best = {r["chosen"] for r in records if r["arm"] == "spot_best"}
    worst = {r["chosen"] for r in records if r["arm"] == "spot_worst"}
    same = "" if len(orders) == 1 else " (the runs' rankings differ)"
    names = [", ".join(sorted(n.removeprefix("wordnet_") for n in chosen)) or "-" for chosen in (best, worst)]
    lines.append(f"| {task} | {order}{same} | {names[0]} | {names[1]} | {len(records)} |")
  return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
  width = 0.8 / len(ARMS_ALL)
  for ax, key, what in zip(axes, ("score", "token_accuracy"), ("sequence accuracy (the score)", "token accuracy")):
    for i, (arm, label) in enumerate(ARMS_ALL.items()):
      for t, task in enumerate(TASKS):
        scores = [r[key] for r in rows if r["task"] == task and r["arm"] == arm and r[key] is not None]
        if not scores:
          continue
        x = t + (i - (len(ARMS_ALL) - 1) / 2) * width
        mean = statistics.mean(scores)
        ax.bar(x, mean, width, color=f"C{i}", label=label if t == 0 else None, alpha=0.8)
        ax.errorbar(x, mean, yerr=[[mean - min(scores)], [max(scores) - mean]], color="black", capsize=3, lw=1)
        ax.scatter([x] * len(scores), scores, color="black", s=8, zorder=3)
    ax.set_xticks(range(len(TASKS)), list(TASKS), fontsize=8)
    ax.set_ylabel(f"validation {what}")
    ax.set_ylim(0, 1)
  axes[0].legend(fontsize=8, loc="upper right")
  fig.suptitle("Demo family (10M T5), teacher-forced: bars the mean over seeds, whiskers min-max, dots the seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--spot", type=Path, required=True, help="demo_spot.gin's sweep folder")
  parser.add_argument("--mpt", type=Path, default=None, help="demo_spot_mpt.gin's sweep folder")
  parser.add_argument("--out", type=Path, required=True, help="where results.csv, results.md and the figure go")
  parser.add_argument("--parallel", type=int, default=2, help="per-task evaluations at a time")
  args = parser.parse_args(argv)
  if args.mpt is not None:
    score_mpt_runs(args.mpt, args.parallel)
  rows = collect(args.spot, args.mpt)
  args.out.mkdir(parents=True, exist_ok=True)
  with open(args.out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["task", "arm", "seed", "score", "token_accuracy", "cross_entropy", "run"])
    writer.writeheader()
    writer.writerows(rows)
  text = "\n\n".join(
    [
      f"{METRIC}:",
      table(rows),
      f"{TOKEN_METRIC}:",
      table(rows, "token_accuracy"),
      f"{LOSS_METRIC}:",
      table(rows, "cross_entropy"),
      ranking_table(rankings(args.spot)),
    ]
  )
  (args.out / "results.md").write_text(text)
  figure(rows, args.out / "demo_spot.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
