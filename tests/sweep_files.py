"""Tiny sweep files for the sweep tests: the t5_1_1_tiny reference checkpoint on a yes/no task read from local files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from local_task_files import write_task

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"

# Axes: size (one), method (prompt, model; model drops prompt_length), prompt_length (2, 3), seed (0, 1). Grids:
# figure1 = size x method, figure3a = size x prompt_length, seeds = seed: four runs, in this order.
TINY_AXES = """
sweep.axes = {
  'size': @size/axis(),
  'method': @method/axis(),
  'prompt_length': @prompt_length/axis(),
  'seed': @seed/axis(),
}
sweep.grids = {
  'figure1': ['size', 'method'],
  'figure3a': ['size', 'prompt_length'],
  'seeds': ['seed'],
}
size/axis.values = {'tiny': []}
method/axis.values = {
  'prompt': [],
  'model': ['PROMPT_LENGTH = 0', "TRAINABLE_PATTERN = '.*'", 'adafactor.learning_rate = 1e-3'],
}
method/axis.drops = {'model': ['prompt_length']}
prompt_length/axis.binding = 'PROMPT_LENGTH'
prompt_length/axis.values = [2, 3]
prompt_length/axis.default = 3
seed/axis.binding = 'RunConfig.seed'
seed/axis.values = [0, 1]
"""
TINY_RUNS = [
  "size=tiny,method=prompt,prompt_length=3,seed=0",
  "size=tiny,method=model,seed=0",
  "size=tiny,method=prompt,prompt_length=2,seed=0",
  "size=tiny,method=prompt,prompt_length=3,seed=1",
]


def write_sweep(folder: Path, name: str, steps: int, axes: str = TINY_AXES, extra_bindings: Sequence[str] = ()) -> Path:
  """A sweep file over test/prompt_tiny.gin with the local task; `steps` steps, a checkpoint every 4."""
  train, validation = write_task(folder / "task")
  bindings = [
    f"INITIAL_CHECKPOINT_PATH = '{REFERENCE / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
    f"VOCABULARY_PATH = '{REFERENCE / 't5_spm_32000.model'}'",
    f"LOCAL_TASK_NAME = 'sweep_yes_no_{name}'",
    f"TRAIN_FILE = '{train}'",
    f"VALIDATION_FILE = '{validation}'",
    "INPUT_TEMPLATE = 'question: {question}'",
    "TARGET_COLUMN = 'answer'",
    "CLASS_LABELS = ['no', 'yes']",
    f"TRAIN_STEPS = {steps}",
    "CHECKPOINT_EVERY = 4",
    f"EVAL_EVERY = {max(steps // 2, 1)}",
    *extra_bindings,
  ]
  text = "import prompt_tuning.sweeps.spec\n\n"
  text += f"sweep.name = '{name}'\n"
  text += "sweep.gin_files = ['test/prompt_tiny.gin', 'tasks/local_files.gin']\n"
  text += "sweep.bindings = [\n" + "".join(f"  {b!r},\n" for b in bindings) + "]\n"
  text += axes
  path = folder / f"{name}.gin"
  path.write_text(text)
  return path
