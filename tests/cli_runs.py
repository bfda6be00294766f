"""`prompt-tuning ARGS` run inside the test process, through the same `cli.main` the console script calls.

The tests that check what a command does (its files, its numbers, its error line) run it here, sparing each command
a Python, TensorFlow and JAX start-up (about 10 s on 2 cores). What only a fresh process shows -- the console
scripts, TensorFlow's start-up lines hidden -- is checked by tests/test_readme.py, which runs a README command of
each start-up path as a subprocess (the others here), and by tests/test_cli.py (the console scripts). Each call
starts and ends with an empty gin config, keeps the command from pointing JAX's persistent compilation cache
elsewhere (the tests' process has its own: conftest.py) and ends with no tfds data folder set (--tfds_data_dir), so
nothing of a command stays behind for the next test in this worker.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
  returncode: int
  stdout: str
  stderr: str


def run_cli(capfd, *args, extra_path=None, cwd=None) -> Result:
  """Runs `prompt-tuning *args` and returns its exit status and what it printed (capfd: pytest's fixture).

  Args:
    extra_path: a folder put first on sys.path for the command (a user's task module), removed afterwards. Modules
      imported from it stay imported (their tasks stay registered), so give them names no other test uses.
    cwd: the folder the command runs in (the test's own afterwards).
  """
  import gin

  from prompt_tuning import cli
  from prompt_tuning.data import set_tfds_data_dir

  saved_env = os.environ.get("PROMPT_TUNING_COMPILATION_CACHE")
  os.environ["PROMPT_TUNING_COMPILATION_CACHE"] = "off"
  if extra_path is not None:
    sys.path.insert(0, str(extra_path))
  gin.clear_config()
  capfd.readouterr()
  here = os.getcwd()
  try:
    if cwd is not None:
      os.chdir(cwd)
    code = cli.main([str(a) for a in args])
  finally:
    os.chdir(here)
    gin.clear_config()
    set_tfds_data_dir(None)
    if extra_path is not None:
      sys.path.remove(str(extra_path))
    if saved_env is None:
      os.environ.pop("PROMPT_TUNING_COMPILATION_CACHE")
    else:
      os.environ["PROMPT_TUNING_COMPILATION_CACHE"] = saved_env
  out = capfd.readouterr()
  return Result(code, out.out, out.err)
