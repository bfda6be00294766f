"""`prompt-tuning sweep plan|run|status|report`: scale sweeps from a sweep file (prompt_tuning/sweeps/spec.py).

    prompt-tuning sweep plan   SWEEP.gin [--sweep_dir DIR] [--gin.NAME=VALUE ...]
    prompt-tuning sweep run    SWEEP.gin [--sweep_dir DIR] [--parallel N] [--gpus_per_run G] [--attempts 3]
                               [--executor ray [--ray_address HOST:PORT] [--cpus_per_run C]] [--gin.NAME=VALUE ...]
    prompt-tuning sweep status SWEEP.gin|DIR [--sweep_dir DIR]
    prompt-tuning sweep report SWEEP.gin|DIR [--sweep_dir DIR]

The sweep's folder defaults to sweeps/NAME (NAME from the sweep file); --sweep_dir may be a local (or mounted) folder
or a Cloud Storage folder, gs://bucket/sweep (its records, each run's MODEL_DIR and the report go there; see
prompt_tuning/sweeps/records.py). `--gin.NAME=VALUE` overrides go to every run,
after the sweep's own (e.g. `--gin.TRAIN_STEPS=20` for a quick try; give such a run its own --sweep_dir). `run` skips
the runs already done, resumes the interrupted ones from their checkpoints, and tries a failing run up to --attempts
times; it exits 1 if any run is not done at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prompt_tuning import gin_config, storage
from prompt_tuning.sweeps import executors, records, spec

SUBCOMMANDS = ("plan", "run", "status", "report")


def sweep_directory_lock(sweep_dir: Any):
  """The sweep folder's lock: one driver per sweep folder at a time (a second is refused with the holder's PID); on
  gs://, the lock object with a heartbeat that a gs:// MODEL_DIR has (locks.BucketLock)."""
  from prompt_tuning import locks

  return locks.DirectoryLock(sweep_dir, what="sweep")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="prompt-tuning sweep", description=__doc__.splitlines()[0])
  parser.add_argument("subcommand", choices=SUBCOMMANDS)
  parser.add_argument("sweep", help="the sweep file (searched like a --gin_file), or a sweep folder (status, report)")
  parser.add_argument("--sweep_dir", type=_sweep_folder, default=None, help="the sweep's folder (default: sweeps/NAME)")
  parser.add_argument("--executor", choices=("local", "ray"), default=None, help="run: where (default: local)")
  parser.add_argument("--parallel", type=int, default=None, help="local: runs at a time, each on its own cores (1)")
  parser.add_argument("--gpus_per_run", type=int, default=None, help="GPUs each run gets (local: CUDA_VISIBLE_DEVICES)")
  parser.add_argument("--cpus_per_run", type=float, default=None, help="ray: the CPUs each run's task requests (1)")
  parser.add_argument("--ray_address", default=None, help="ray: a cluster's address (default: start a local Ray)")
  parser.add_argument("--attempts", type=int, default=None, help="run: tries of a failing run, in all (3)")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks")
  return parser


def _sweep_folder(text: str) -> Any:
  """--sweep_dir: a local (or mounted) folder, or gs://bucket/folder; another URL is refused (Path("s3://b/s") would
  be the local folder "s3:/b/s")."""
  try:
    storage.check_scheme(text, "--sweep_dir")
  except storage.StorageError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return storage.path(text)


def _absolute(folder: Any) -> Any:
  """A local folder made absolute (the runs' command lines name it); a gs:// folder as it is."""
  return folder if storage.is_remote(folder) else Path(folder).resolve()


RUN_OPTIONS = {
  "executor": None,
  "parallel": "local",
  "gpus_per_run": None,
  "cpus_per_run": "ray",
  "ray_address": "ray",
  "attempts": None,
}
DEFAULTS = {"executor": "local", "parallel": 1, "gpus_per_run": 0, "cpus_per_run": 1, "attempts": 3}


def _check_options(args) -> None:
  """Refuses an option the subcommand (or executor) would not read, then fills in the defaults."""
  for option, executor in RUN_OPTIONS.items():
    given = getattr(args, option) is not None
    if given and args.subcommand != "run":
      raise ValueError(f"--{option} is an option of `sweep run`, not of `sweep {args.subcommand}`.")
    if given and executor is not None and (args.executor or "local") != executor:
      chosen = args.executor or "local"
      raise ValueError(f"--{option} is read by --executor {executor} only, and this run's executor is {chosen}.")
  for option, value in DEFAULTS.items():
    if getattr(args, option) is None:
      setattr(args, option, value)


def _folder(args, loaded: spec.Sweep | None) -> Any:
  if args.sweep_dir is not None:
    return args.sweep_dir
  if loaded is None:
    return storage.path(args.sweep)
  return Path("sweeps") / loaded.name


def _load(args, overrides: list[str]):
  loaded = spec.load_sweep(args.sweep)
  points = spec.expand(loaded)
  from prompt_tuning.sweeps import planning

  return loaded, planning.with_overrides(points, overrides)


def _plan(args, overrides: list[str]) -> int:
  from prompt_tuning.sweeps import planning

  loaded, points = _load(args, overrides)
  sweep_dir = _absolute(_folder(args, loaded))
  planned = planning.plan_sweep(loaded, points, sweep_dir)
  print(planning.format_plan(planned, sweep_dir))
  return 0


def _check_unchanged(folder: Any, record: records.RunRecord) -> None:
  """Refuses a run that has started (it has metrics) under another command line than the sweep gives it now.

  Paths under the sweep folder are compared relative to it (a moved or copied sweep folder continues), and the
  Python interpreter may differ (another virtualenv). A damaged run.json cannot be compared: it is written again
  from the sweep file, with a warning.
  """
  if not (folder / "run.json").is_file() or not records.read_metrics(folder):
    return
  try:
    before = records.read_run(folder)
  except records.SweepStateError:
    print(
      f"warning: {folder / 'run.json'} is damaged: written again from the sweep file (the command line it recorded "
      "cannot be compared with the sweep's).",
      file=sys.stderr,
    )
    return
  if records.portable_command(before.command) != records.portable_command(record.command):
    raise ValueError(
      f"run {record.name} in {folder.parent.parent} has started with another command line than the sweep file "
      "gives it now: give the changed sweep its own --sweep_dir, or delete that run's folder to start it again."
    )


def _progress(total: int):
  counter = {"ended": 0}

  def report(outcome: executors.Outcome) -> None:
    counter["ended"] += 1
    state = "done" if outcome.finished else "interrupted" if outcome.interrupted else "FAILED"
    tries = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
    line = f"[{counter['ended']}/{total}] {state} {outcome.name} ({outcome.seconds:.0f} s{tries})"
    if outcome.error:
      line += f"\n    error: {outcome.error}"
    print(line, flush=True)

  return report


def _run(args, overrides: list[str]) -> int:
  from prompt_tuning.sweeps import planning

  if args.attempts < 1:
    raise ValueError(f"--attempts {args.attempts}: give 1 or more.")
  loaded, points = _load(args, overrides)
  sweep_dir = _absolute(_folder(args, loaded))
  planned = planning.plan_sweep(loaded, points, sweep_dir)  # a config error: refused before the folder is made
  storage.check_bucket(sweep_dir, "--sweep_dir")  # a gs:// folder: its bucket is tried before anything is written
  with sweep_directory_lock(sweep_dir):
    records.write_sweep(sweep_dir, loaded, [p.record.name for p in planned])
    tasks, elsewhere = [], []
    for p in planned:
      folder = records.run_dir(sweep_dir, p.record.name)
      _check_unchanged(folder, p.record)
      records.write_run(sweep_dir, p.record)
      state = records.run_status(folder, driver_holds_lock=True).state
      if state == "running":  # another driver's live run: left to it
        elsewhere.append(p.record.name)
      elif state != "done":
        tasks.append(executors.Task(p.record.name, str(folder), tuple(p.record.command), p.record.steps))
    done = len(planned) - len(tasks) - len(elsewhere)
    also = f", {len(elsewhere)} running in another driver (left to it)" if elsewhere else ""
    print(f"sweep {loaded.name}: {len(planned)} runs, {done} already done{also}; running {len(tasks)}")
    start = time.time()
    if args.executor == "local":
      executors.run_local(tasks, args.parallel, args.attempts, args.gpus_per_run, report=_progress(len(tasks)))
    else:
      executors.run_ray(
        tasks, args.ray_address, args.cpus_per_run, args.gpus_per_run, args.attempts, report=_progress(len(tasks))
      )
    statuses = records.sweep_status(sweep_dir, driver_holds_lock=True)
  print(f"{time.time() - start:.0f} s; " + records.format_status(statuses).splitlines()[-1])
  return 0 if all(s.state == "done" for s in statuses) else 1


def _sweep_dir_of(args) -> Any:
  """The folder of an existing sweep: given as the argument (local or gs://), with --sweep_dir, or sweeps/NAME of the
  sweep file."""
  if args.sweep_dir is not None:
    return args.sweep_dir
  if storage.is_remote(args.sweep):
    storage.check_scheme(args.sweep, "the sweep folder")
    return storage.path(args.sweep)
  if Path(args.sweep).is_dir():
    return Path(args.sweep)
  return _folder(args, spec.load_sweep(args.sweep))


def _status(args) -> int:
  statuses = records.sweep_status(_sweep_dir_of(args))
  print(records.format_status(statuses))
  return 0


def _report(args) -> int:
  from prompt_tuning.sweeps import report

  sweep_dir = _sweep_dir_of(args)
  written = report.write_report(sweep_dir)
  print(written["markdown"].read_text())
  for what, path in written.items():
    print(f"{what}: {path}")
  return 0


def main(argv: list[str]) -> int:
  """Dispatches `prompt-tuning sweep ...` (errors are turned into one line by prompt_tuning.cli)."""
  bindings, rest = gin_config.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  _check_options(args)
  if bindings and args.subcommand not in ("plan", "run"):
    raise ValueError(f"--gin.NAME=VALUE overrides are for `sweep plan` and `sweep run`, not `sweep {args.subcommand}`.")
  if args.subcommand in ("plan", "run") and (storage.is_remote(args.sweep) or Path(args.sweep).is_dir()):
    raise ValueError(f"`sweep {args.subcommand}` needs the sweep file, not a folder ({args.sweep}).")
  if args.subcommand == "plan":
    return _plan(args, bindings)
  if args.subcommand == "run":
    return _run(args, bindings)
  if args.subcommand == "status":
    return _status(args)
  return _report(args)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
