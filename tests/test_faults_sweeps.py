"""Sweep faults of issue #31 (probes 28-37 of ../shared/faults/probes-2026-12-06.md): each fault injected into a sweep
file, the command line or a finished sweep folder, and the outcome a user relies on: a refusal by `sweep plan` before
anything starts, our message naming the damaged file and the way on, or a sweep that simply continues.

One tiny 2-run sweep (seeds 0 and 1, 4 steps, a checkpoint at step 4) is trained once for the module; each test
damages its own copy.
"""

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_files import write_sweep  # noqa: E402

from prompt_tuning import cli  # noqa: E402
from prompt_tuning.sweeps import executors, records  # noqa: E402

SEEDS = """
sweep.axes = {'seed': @seed/axis()}
seed/axis.binding = 'RunConfig.seed'
seed/axis.values = [0, 1]
"""
RUNS = ["seed=0", "seed=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, reference_dir) -> tuple[Path, Path]:
  """(sweep file, sweep folder) of a finished 2-run sweep."""
  folder = tmp_path_factory.mktemp("finished_sweep")
  sweep_file = write_sweep(folder, "faults", steps=4, axes=SEEDS)
  sweep_dir = folder / "out"
  assert cli.main(["sweep", "run", str(sweep_file), f"--sweep_dir={sweep_dir}"]) == 0
  return sweep_file, sweep_dir


def _copy(finished, tmp_path: Path) -> Path:
  """A copy of the finished sweep folder in another place (as `cp -a` makes it)."""
  target = tmp_path / "copied"
  shutil.copytree(finished[1], target, symlinks=True)
  return target


def _sweep(capsys, *argv) -> tuple[int, str, str]:
  code = cli.main(["sweep", *map(str, argv)])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------------
# 28, 34, 35, 36: refused by `sweep plan` (and so by `sweep run`, which plans first), before anything starts.

TYPO_AXES = SEEDS.replace("{'seed': @seed/axis()}", "{'seed': @seed/axis(), 'pl': @pl/axis()}") + (
  "pl/axis.values = {'a': ['PROMPT_LENTH = 5'], 'b': ['PROMPT_LENGTH = 6']}\n"
)


@pytest.mark.parametrize(
  "axes, bindings, overrides, named",
  [
    (TYPO_AXES, [], [], "PROMPT_LENTH is set but read by nothing in this configuration; did you mean PROMPT_LENGTH?"),
    (SEEDS, ["TRAIN_STEP = 4"], [], "TRAIN_STEP is set but read by nothing"),
    (SEEDS, [], ["--gin.TRAIN_STEP=20"], "TRAIN_STEP is set but read by nothing"),
  ],
  ids=["axis_value", "sweep_bindings", "override"],
)
def test_plan_and_run_refuse_a_typo_before_anything_starts(
  reference_dir, tmp_path, capsys, axes, bindings, overrides, named
):
  sweep_file = write_sweep(tmp_path, "typo", steps=4, axes=axes, extra_bindings=bindings)
  code, _, err = _sweep(capsys, "plan", sweep_file, *overrides)
  assert code == 1
  assert err.startswith("error: ValueError: run seed=0") and "its gin config is refused: UnreadSettingError" in err
  assert named in err
  code, out, err = _sweep(capsys, "run", sweep_file, f"--sweep_dir={tmp_path / 'out'}", *overrides)
  assert code == 1 and named in err
  assert not (tmp_path / "out").exists()  # no run started (so none is tried three times), no folder made


def test_a_run_config_given_as_the_sweep_file_is_named_as_such(capsys):
  code, _, err = _sweep(capsys, "plan", "demo/prompt.gin")
  assert code == 1
  assert "demo/prompt.gin is not a sweep file: it binds no sweep.* setting (it looks like a run's config)" in err
  assert "prompt-tuning train --gin_file=demo/prompt.gin" in err


@pytest.mark.parametrize(
  "override, named",
  [
    ("--gin.TRAIN_STEPS='abc'", "TRAIN_STEPS (train.num_train_steps) must be an integer >= 1, got 'abc'"),
    ("--gin.PROMPT_LENGTH='abc'", "PROMPT_LENGTH must be an integer >= 0, got 'abc'"),
  ],
)
def test_a_bad_override_value_names_the_setting(reference_dir, tmp_path, capsys, override, named):
  sweep_file = write_sweep(tmp_path, "badvalue", steps=4, axes=SEEDS)
  code, _, err = _sweep(capsys, "plan", sweep_file, override)
  assert code == 1 and "its gin config is refused: SettingError" in err and named in err


@pytest.mark.parametrize("subcommand", ["plan", "run"])
def test_a_model_dir_override_is_refused(tmp_path, capsys, subcommand):
  code, _, err = _sweep(capsys, subcommand, "sweeps/demo_scale.gin", f"--gin.MODEL_DIR='{tmp_path}'")
  assert code == 1
  assert f"\"MODEL_DIR = '{tmp_path}'\" (in the sweep file or a --gin override): a sweep's runs each train" in err
  assert "give --sweep_dir DIR" in err
  assert not (Path("sweeps") / "demo_scale").exists()


# ---------------------------------------------------------------------------------------------------------------
# 29: a damaged or missing file of a sweep folder: our message naming it and the way on, or a fallback.


def _damage_run_json(sweep_dir: Path) -> None:
  (sweep_dir / "runs" / "seed=1" / "run.json").write_text("{bad")


def _tear_attempts(sweep_dir: Path) -> None:
  with open(sweep_dir / "runs" / "seed=1" / "attempts.jsonl", "a") as f:
    f.write('{"host": "vm", "pi')


def _damage_sweep_json(sweep_dir: Path) -> None:
  (sweep_dir / "sweep.json").write_text("{")


def _garble_metrics(sweep_dir: Path) -> None:
  with open(sweep_dir / "runs" / "seed=1" / "metrics.jsonl", "ab") as f:
    f.write(bytes(range(128, 256)) * 20)


def _damage_running_json(sweep_dir: Path) -> None:
  (sweep_dir / "runs" / "seed=1" / "done.json").unlink()
  (sweep_dir / "runs" / "seed=1" / "running.json").write_bytes(b'{"host": \xff')


def _delete_run(sweep_dir: Path) -> None:
  shutil.rmtree(sweep_dir / "runs" / "seed=1")


@pytest.mark.parametrize(
  "damage, status_code, status_says",
  [
    (_damage_run_json, 0, ["runs/seed=1/run.json is damaged (JSONDecodeError", "sweep run SWEEP.gin --sweep_dir"]),
    (_tear_attempts, 0, ["done 2  running 0"]),
    (_damage_sweep_json, 1, ["/sweep.json is damaged (JSONDecodeError", "writes it again from the sweep file"]),
    (_garble_metrics, 0, ["done 2  running 0"]),
    (_damage_running_json, 0, ["interrupted", "`sweep run` resumes it from its checkpoint"]),
    (_delete_run, 0, ["runs/seed=1 is missing; `sweep run` starts this run again"]),
  ],
  ids=["run_json", "attempts_torn", "sweep_json", "metrics_not_utf8", "running_json", "run_folder_deleted"],
)
def test_a_damaged_sweep_folder_gets_our_message_and_a_way_on(
  finished, tmp_path, capsys, damage, status_code, status_says
):
  sweep_dir = _copy(finished, tmp_path)
  damage(sweep_dir)
  code, out, err = _sweep(capsys, "status", sweep_dir)
  assert code == status_code, out + err
  for words in status_says:
    assert words in out + err
  assert "Traceback" not in err
  if status_code:
    assert err.startswith("error: SweepStateError: ") and str(sweep_dir) in err
  code, out, err = _sweep(capsys, "report", sweep_dir)
  if damage is _damage_sweep_json:
    assert code == 1 and "sweep.json is damaged" in err
  else:
    assert code == 0, err
    results = (sweep_dir / "report" / "results.md").read_text()
    if damage in (_damage_run_json, _delete_run):
      assert "**1 runs left out**, their records unreadable: seed=1" in results
    elif damage is _damage_running_json:
      assert "**1 of 2 runs are not done** (interrupted: seed=1)" in results
    else:
      assert "not done" not in results


def test_sweep_run_writes_damaged_records_again_and_skips_finished_runs(finished, tmp_path, capsys):
  sweep_dir = _copy(finished, tmp_path)
  _damage_sweep_json(sweep_dir)
  _damage_run_json(sweep_dir)
  _tear_attempts(sweep_dir)
  code, out, err = _sweep(capsys, "run", finished[0], f"--sweep_dir={sweep_dir}")
  assert code == 0, out + err
  assert "2 runs, 2 already done; running 0" in out
  assert "run.json is damaged: written again from the sweep file" in err
  assert records.read_sweep(sweep_dir)["runs"] == RUNS
  assert records.read_run(sweep_dir / "runs" / "seed=1").name == "seed=1"
  # The torn attempt line stays apart from the records written after it.
  folder = sweep_dir / "runs" / "seed=1"
  records.end_attempt(folder, {"host": "h", "pid": 1, "start": 0.0}, 1, "a failure", steps=4)
  assert records.read_attempts(folder)[-1]["error"] == "a failure"


# ---------------------------------------------------------------------------------------------------------------
# 30, 31, 32: a stale running.json naming a live PID, a moved sweep folder, a run whose metrics lost rows.


def test_a_running_record_whose_pid_was_reused_is_not_running(finished, tmp_path, capsys):
  sweep_dir = _copy(finished, tmp_path)
  folder = sweep_dir / "runs" / "seed=1"
  (folder / "done.json").unlink()
  live = os.getpid()  # a live process, but not the one that started the run
  attempt = records.start_attempt(folder, live, [], "local")
  assert attempt["pid_start"] == records.process_start_time(live) and attempt["pid_start"]
  assert records.run_status(folder).state == "running"
  attempt["pid_start"] = attempt["pid_start"].rsplit(":", 1)[0] + ":1"  # the PID's first owner started at tick 1
  (folder / "running.json").write_text(json.dumps(attempt))
  assert records.run_status(folder).state == "interrupted"


def test_a_moved_sweep_folder_continues_past_a_stale_running_record_and_lost_metrics_rows(finished, tmp_path, capsys):
  sweep_dir = _copy(finished, tmp_path)  # every run's recorded MODEL_DIR is under the original folder
  # One run (one process) meets both faults; the other stays done.
  folder = sweep_dir / "runs" / "seed=1"
  (folder / "done.json").unlink()
  # An older driver's record naming a live PID (this process) with no start time: only the folder's lock, held by
  # `sweep run`, tells that no driver is running it.
  (folder / "running.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
  rows = (folder / "metrics.jsonl").read_text().splitlines()
  (folder / "metrics.jsonl").write_text("\n".join(rows[:1]) + "\n")  # its checkpoint is at step 4, its metrics at 1
  assert records.last_step(folder) == 4
  code, out, err = _sweep(capsys, "run", finished[0], f"--sweep_dir={sweep_dir}")
  assert code == 0, out + err
  assert "2 runs, 1 already done; running 1" in out
  assert "started with another command line" not in err
  attempts = records.read_attempts(folder)
  assert len(attempts) == 2 and attempts[-1]["returncode"] == 0, attempts  # one attempt, not three
  assert records.read_run(folder).command[-1] == f"--gin.MODEL_DIR='{folder}'"
  assert [s.state for s in records.sweep_status(sweep_dir)] == ["done", "done"]


def test_a_changed_command_line_is_still_refused_in_a_moved_folder(finished, tmp_path, capsys):
  sweep_dir = _copy(finished, tmp_path)
  code, _, err = _sweep(capsys, "run", finished[0], f"--sweep_dir={sweep_dir}", "--gin.EVAL_EVERY=1")
  assert code == 1 and "run seed=0 in" in err and "has started with another command line" in err


# ---------------------------------------------------------------------------------------------------------------
# 33: Ctrl-C is recorded as interrupted, not failed, and not tried again.


@pytest.fixture
def sigint_reaches_children():
  """Python's own SIGINT handler in this process while the test runs, so the runs it starts get SIGINT's default
  action at exec: a shell's background job (`make test &`) starts with SIGINT ignored, children inherit that, and
  the run below then never saw the Ctrl-C (it trained on until the runner's wait ran out)."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_ctrl_c_on_a_run_is_recorded_as_interrupted_and_not_retried(finished, tmp_path, sigint_reaches_children):
  sweep_dir = _copy(finished, tmp_path)
  folder = sweep_dir / "runs" / "seed=1"
  (folder / "done.json").unlink()
  command = [
    c for c in records.read_run(folder).command if not c.startswith(("--gin.MODEL_DIR=", "--gin.TRAIN_STEPS="))
  ]
  command += ["--gin.TRAIN_STEPS=100000", f"--gin.MODEL_DIR='{folder}'"]
  task = executors.Task("seed=1", str(folder), tuple(command), 100000)
  # The attempts before this one, counted before the runner starts: counted after, the runner's new attempt could
  # already be in the log, and the wait below would never see one more (it then ran its whole 300 s, once).
  log = folder / "log.txt"
  before = log.read_text().count("=== attempt")
  outcomes = []
  runner = threading.Thread(target=lambda: outcomes.append(executors.run_with_retries(task, attempts=3)))
  runner.start()
  deadline = time.time() + 300

  def training() -> bool:  # the new attempt has started its steps
    text = log.read_text(errors="replace")
    return text.count("=== attempt") > before and "train:" in text.rsplit("=== attempt", 1)[-1]

  while time.time() < deadline and not training():
    time.sleep(0.1)
  if not training():  # say what the run wrote, rather than interrupt it wherever it is
    os.kill(json.loads((folder / "running.json").read_text())["pid"], signal.SIGKILL)
    runner.join(timeout=60)
    pytest.fail(f"in 300 s the new attempt did not start its steps:\n{log.read_text(errors='replace')[-3000:]}")
  pid = json.loads((folder / "running.json").read_text())["pid"]
  os.kill(pid, signal.SIGINT)
  runner.join(timeout=300)
  if runner.is_alive():  # never leave a run of 100000 steps behind
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=60)
    pytest.fail(f"the run went on after SIGINT:\n{log.read_text(errors='replace')[-3000:]}")
  (outcome,) = outcomes
  assert outcome.interrupted and not outcome.finished and outcome.attempts == 1
  last = records.read_attempts(folder)[-1]
  assert last["interrupted"] and last["returncode"] in records.INTERRUPTED_RETURNCODES
  status = records.run_status(folder)
  assert status.state == "interrupted"
  assert status.error.startswith("interrupted (Ctrl-C) at step ") and "`sweep run` resumes it" in status.error


def test_a_ctrl_c_that_a_callback_swallowed_still_ends_the_command(sigint_reaches_children, capsys):
  """The flake of the test above, made certain: a Ctrl-C landing in a callback (JAX's garbage-collection callback
  there, a __del__ here) has its KeyboardInterrupt printed as "Exception ignored" and lost; the command still ends
  with status 130 at the next `raise_if_interrupted` (the train loop calls it every step), and the next command
  starts with no Ctrl-C remembered."""
  from prompt_tuning import command, interrupts

  reached = []

  class InterruptedWhileCollected:
    def __del__(self):
      os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler here, inside __del__: its exception is lost

  def dispatch(name, argv):
    InterruptedWhileCollected()  # collected at once
    reached.append("after the lost KeyboardInterrupt")
    interrupts.raise_if_interrupted()
    reached.append("went on")
    return 0

  assert command.run("train", ["--verbose"], dispatch) == 130
  assert reached == ["after the lost KeyboardInterrupt"]  # lost: else the first append would not have run
  assert "interrupted; the last finished checkpoint is kept." in capsys.readouterr().err
  assert command.run("train", ["--verbose"], lambda name, argv: interrupts.raise_if_interrupted() or 0) == 0


# ---------------------------------------------------------------------------------------------------------------
# 37: results.md says which runs are not done.


def test_the_report_of_a_finished_sweep_gives_the_mean_and_std_over_its_seeds(finished, tmp_path, capsys):
  sweep_dir = _copy(finished, tmp_path)
  code, _, err = _sweep(capsys, "report", sweep_dir)
  assert code == 0, err
  row = (sweep_dir / "report" / "results.md").read_text().splitlines()[-1]
  assert row.startswith("| 2 | ") and row.count(" ± ") == 2, row  # seeds 0 and 1: final and best, mean ± std
  assert "not done" not in (sweep_dir / "report" / "results.md").read_text()


def test_the_report_says_which_runs_failed(finished, tmp_path, capsys):
  sweep_dir = _copy(finished, tmp_path)
  folder = sweep_dir / "runs" / "seed=1"
  (folder / "done.json").unlink()
  records.end_attempt(folder, {"host": "h", "pid": 1, "start": 0.0}, 1, "SettingError: something", steps=4)
  code, out, _ = _sweep(capsys, "report", sweep_dir)
  assert code == 0
  results = (sweep_dir / "report" / "results.md").read_text()
  assert "**1 of 2 runs are not done** (failed: seed=1)" in results
  assert "| 2 (1 done) |" in results


def test_a_tensorflow_log_line_is_never_a_runs_error_line():
  warning = "W0000 00:00:1796548188.229 12345 cache_dataset_ops.cc:912] The calling iterator did not fully read"
  assert records.error_line(f"train: 30/120\n{warning}\n") == "train: 30/120"
  assert records.error_line(f"ValueError: bad\n{warning}\n") == "ValueError: bad"
  assert records.error_line(f"{warning}\nerror: SettingError: BATCH_SIZE\n") == "SettingError: BATCH_SIZE"
