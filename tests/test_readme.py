"""Every command line in README.md's ```bash blocks runs, as written, with tiny stand-ins for paths and sizes.

New commands are picked up by themselves; a command that cannot run here must be listed in NOT_RUN with the reason.
The stand-ins (STAND_INS) replace README's paths and the xxl size by the reference tiny T5X checkpoint, the real
T5 SentencePiece model, folders under the test's temporary folder and configs/test/readme_tiny.gin (prompt_xxl.gin's
recipe at tiny size); nothing else in a command changes. BoolQ is prepared by tfds itself from a small archive of
the published layout (tests/test_data_prepare.py), so the README's SuperGLUE task is the one that runs. The commands
run through cli.main, the console script's entry point: a gin command and one of the other commands as fresh
processes (which alone show TensorFlow's start-up lines), the rest in this process. `plan`'s own start-up path runs
as a fresh process, quiet, in tests/test_plan.py::test_the_command_line_plans_a_config_on_a_model_parallel_mesh.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from sweep_files import write_sweep
from test_data_prepare import ARCHIVES, _place_in_download_cache

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Command lines that cannot run inside the test suite, and why.
NOT_RUN = {
  "make demo": "the full demo (11 minutes); tests/test_demo.py runs the same entry point with --quick",
  "make test": "runs this very test suite",
}
# Command lines another test runs, against what they need (a server process), and which test.
RUN_ELSEWHERE = {
  "cp -r prompt_tuning/assets/demo_library ": "tests/test_serve.py::test_the_readme_serving_example_runs_as_written",
  "export PROMPT_TUNING_ADMIN_TOKEN=": "tests/test_serve.py::test_the_readme_serving_example_runs_as_written",
  "prompt-tuning serve ": "tests/test_serve.py::test_the_readme_serving_example_runs_as_written",
  "curl ": "tests/test_serve.py::test_the_readme_serving_example_runs_as_written",
}
PROGRAMS = {"prompt-tuning", "t5x"}
README_SWEEP_AXES = """
sweep.axes = {'size': @size/axis(), 'method': @method/axis(), 'seed': @seed/axis()}
sweep.grids = {'figure1': ['size', 'method']}
size/axis.values = {'tiny': []}
method/axis.values = {'prompt': []}
seed/axis.binding = 'RunConfig.seed'
seed/axis.values = [0]
"""


def _run_here(command: str) -> bool:
  return command not in NOT_RUN and not command.startswith(tuple(RUN_ELSEWHERE))


def readme_commands(text: str) -> list[str]:
  """The command lines of the ```bash blocks: continuation lines joined, comments dropped."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      if words:
        commands.append(shlex.join(words))
  return commands


def test_readme_commands_are_found():
  commands = readme_commands(README.read_text())
  assert set(NOT_RUN) <= set(commands), "NOT_RUN lists a command README.md no longer has"
  programs = {shlex.split(c)[0] for c in commands if _run_here(c)}
  assert programs <= PROGRAMS, f"README runs programs this test does not know: {programs - PROGRAMS}"
  assert any(c.startswith("prompt-tuning train ") for c in commands)


@pytest.fixture(scope="module")
def stand_ins(reference_dir, tmp_path_factory):
  """README path or size -> its tiny stand-in (longest first, so a path is replaced before its parts)."""
  tmp = tmp_path_factory.mktemp("readme")
  tfds_dir, downloads = tmp / "tfds", tmp / "downloads"
  builder = tfds.builder("super_glue/boolq", data_dir=str(tfds_dir))
  _place_in_download_cache(builder, downloads, ARCHIVES["super_glue/boolq"])
  builder.download_and_prepare(download_dir=str(downloads))
  cola = tfds.builder("glue/cola", data_dir=str(tfds_dir))  # the transfer example's target task
  _place_in_download_cache(cola, downloads, ARCHIVES["glue/cola"])
  cola.download_and_prepare(download_dir=str(downloads))
  checkpoint = str(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3")
  # The demo sweep's stand-in: one tiny run of 2 steps (tests/sweep_files.py); sweeps of several runs, in parallel,
  # killed and resumed, are tests/test_sweeps_runs.py's.
  sweep_file = write_sweep(tmp / "sweep", "readme_sweep", steps=2, axes=README_SWEEP_AXES)
  pairs = {
    "configs/sweeps/demo_scale.gin": str(sweep_file),
    "/runs/demo_scale": str(tmp / "demo_scale"),
    "/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000": checkpoint,
    "/ckpts/t5_spm_32000.model": str(reference_dir / "t5_spm_32000.model"),
    "/runs/boolq_xxl": str(tmp / "boolq"),
    "/runs/cola_xxl": str(tmp / "cola"),
    "/runs/cola_from_boolq_xxl": str(tmp / "cola_from_boolq"),
    "tune_target.steps=500": "tune_target.steps=2",
    "/out/peft_adapter": str(tmp / "peft_adapter"),
    "/data/tfds": str(tfds_dir),
    "checkpoint_30000": "checkpoint_4",  # configs/test/readme_tiny.gin trains 4 steps
    "t5_1_1_lm100k_xxl": "t5_1_1_tiny",
    "prompt_xxl.gin": "test/readme_tiny.gin",
  }
  return dict(sorted(pairs.items(), key=lambda kv: -len(kv[0])))


def _substitute(command: str, stand_ins: dict[str, str]) -> list[str]:
  words = shlex.split(command)
  out = []
  for word in words[1:]:
    for readme_text, stand_in in stand_ins.items():
      word = word.replace(readme_text, stand_in)
    out.append(word)
  return out


def test_commands_run_elsewhere_name_tests_that_exist():
  for test in set(RUN_ELSEWHERE.values()):
    path, name = test.split("::")
    assert f"def {name}(" in (ROOT / path).read_text(), test


# The README commands that run as subprocesses (below); a README without one of them fails the test.
SUBPROCESS_COMMANDS = ("prompt-tuning train ", "prompt-tuning tasks show ")


def _in_a_fresh_process(command: str) -> bool:
  """Whether a README command runs as its own process here: the start-up paths of cli.main (a gin command, which sets
  devices up after jax.distributed; the other commands, here `tasks`, which reads tfds), so that what only a fresh
  Python shows (TensorFlow's and absl's start-up lines) is checked for each; `plan`, which sets the CPU device count
  before JAX starts, is checked so by tests/test_plan.py. The others run in this process (tests/cli_runs.py): the
  same cli.main, without a Python, TensorFlow and JAX start-up each (`plan` plans on this process's one device)."""
  return command.startswith(SUBPROCESS_COMMANDS)


def test_every_readme_command_runs(stand_ins, capfd):
  from cli_runs import run_cli

  commands = [c for c in readme_commands(README.read_text()) if _run_here(c)]
  for start in SUBPROCESS_COMMANDS:
    assert any(c.startswith(start) for c in commands), f"README.md has no command starting {start!r}"
  env = dict(os.environ)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command line must quiet TensorFlow itself
  for command in commands:  # in README's order: train before eval, infer, inspect and export
    args = _substitute(command, stand_ins)
    if _in_a_fresh_process(command):
      out = subprocess.run(
        [sys.executable, "-m", "prompt_tuning.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
      )
    else:
      out = run_cli(capfd, *args, cwd=ROOT)
    assert out.returncode == 0, f"README command failed: {command}\n{out.stderr[-4000:]}"
    printed = out.stdout + out.stderr
    assert "ERROR" not in printed and "Traceback" not in printed, f"{command}\n{printed[-3000:]}"
    for noise in ("oneDNN", "cudart_stub", "cuInit", "absl::InitializeLog", "uncached FunctionDataset"):
      assert noise not in printed, f"start-up noise ({noise}) from {command}: {printed[:2000]}"
