"""What the multi-task prompt methods share: a table of per-task prompts [T, P, D], each row (or packed segment) taking
its task's, and the table exported as one plain prompt per task.

Both `multitask_prompt.MultiTaskPrompt` (the reference implementation's shared + per-task prompts) and
`mpt.MultitaskPromptTuning` (MPT, Wang et al. 2023) compute every task's effective prompt from their trained
parameters; their serving form (`fold`) is that table, {"task_prompts": [T, P, D]}, and `adapters` accepts either.
Each task's prompt is a prompt like any other: `export` writes it as `<method>_tasks/task_<k>.npy` (and
`.safetensors`), the files `infer --gin.infer.prompt_files` and the server's library take unchanged (method
"prompt"), so tasks trained together are served apart, or mixed in one batch, with no multi-task code.

The rows' tasks (`task_ids`) come from the data (`prompt_tuning.inputs`: the task sentinel `task_index_` inputs open
with); a multi-task method given no task ids is an error, never a silent task 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning import prompts
from prompt_tuning.methods.base import Limits, Method, PromptError, PyTree, read_tree, write_tree
from prompt_tuning.models.adapters import Adapters
from prompt_tuning.models.configs import T5Config

FOLDED = "task_prompts"  # the folded tree's one leaf: [T, P, D]
FOLDED_AXES = PartitionSpec(None, *prompts.PROMPT_AXES)  # its logical axes: the tasks', then a prompt's


def tasks_folder(name: str) -> str:
  """The export's folder of per-task prompts, next to `<name>.safetensors`."""
  return f"{name}_tasks"


def check_task_count(name: str, num_tasks: int) -> None:
  if not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(
      f"{name}.num_tasks must be a positive integer (one more than the largest task index of the training mixture: "
      f"task_index_ tasks open with <extra_id_K>, task K), got {num_tasks!r}."
    )


def select(table: jax.Array, task_ids: jax.Array | None, name: str, num_tasks: int) -> Adapters:
  """The input site's prompt for each row's task: table [T, P, D] and task_ids int [B] -> [B, P, D], or int [B, S]
  (packed rows, one task per segment) -> [B, S, P, D].

  Raises:
    ValueError: no task ids (the data carries none: not a `task_index_` task, or a path that gives none).
  """
  if task_ids is None:
    raise ValueError(
      f"method {name!r} gives every task its own prompt and needs each row's task: train and evaluate it on "
      f"task_index_ tasks or mixtures (their inputs open with the task's sentinel <extra_id_K>, K < {num_tasks}), "
      f"and serve or infer with its per-task prompts ({tasks_folder(name)}/task_<K>.npy of the export, method "
      "'prompt')."
    )
  # Indices were checked against num_tasks on the host (prompt_tuning.inputs.task_ids); clip keeps a traced
  # out-of-range id from reading past the table.
  return {"input": {"prompt": jnp.take(table, jnp.asarray(task_ids, jnp.int32), axis=0, mode="clip")}}


def export(
  table, name: str, folder: str | Path, own: dict[str, str], metadata: dict[str, str] | None = None
) -> list[Path]:
  """Writes the folded table as `<name>.safetensors` (what `load` reads; `own`, the method's settings, and `metadata`
  in its header) and every task's prompt as a plain prompt file, `<name>_tasks/task_<k>.npy` and `.safetensors`
  ([P, D], the prompt method's format; `metadata`, e.g. the backbone train records, in the header)."""
  from prompt_tuning.checkpoints.prompt_files import save_prompt_file

  table = np.asarray(jax.device_get(table), np.float32)  # [T, P, D]
  written = write_tree({FOLDED: table}, name, folder, {**own, **(metadata or {})})
  tasks = Path(folder) / tasks_folder(name)
  for k, prompt in enumerate(table):
    written += [
      save_prompt_file(tasks / f"task_{k}.npy", prompt),
      save_prompt_file(tasks / f"task_{k}.safetensors", prompt, metadata),
    ]
  return written


def load(name: str, folder: str | Path, num_tasks: int, emb_dim: int) -> PyTree:
  """The folded tree `export` wrote, checked against the run's task count and the backbone's width.

  Raises:
    ValueError: a table of another shape (another run's export).
  """
  tree = read_tree(name, folder)
  table = tree.get(FOLDED) if isinstance(tree, dict) else None
  if table is None or table.ndim != 3 or table.shape[0] != num_tasks or table.shape[2] != emb_dim:
    shape = None if table is None else list(table.shape)
    raise ValueError(
      f"{Path(folder) / (name + '.safetensors')} holds per-task prompts {shape}; this run's {name!r} needs "
      f"[{num_tasks}, P, {emb_dim}] (tasks, length, embedding width)."
    )
  return {FOLDED: table}


def upload_refusal(name: str) -> str:
  """A server serves a multi-task run's prompts one task at a time, as plain prompts."""
  return (
    f"method {name!r} is served through its per-task prompts: upload {tasks_folder(name)}/task_<K>.npy of its "
    "export (a plain [P, D] prompt) with method 'prompt'."
  )


class TaskTableMethod(Method):
  """The serving half of a multi-task method whose vectors fold into one prompt per task, a table [T, P, D]: each
  row takes its task's prompt (`select`), the export is the table plus every task's plain prompt (`export`), and the
  server takes those per-task prompts, not the table. A subclass gives `num_tasks`, `task_table(params)` and
  `settings()` (strings recorded in the export's header)."""

  num_tasks: int

  @property
  def task_count(self) -> int:
    return self.num_tasks

  def task_table(self, params: PyTree) -> jax.Array:
    raise NotImplementedError

  def settings(self) -> dict[str, str]:
    raise NotImplementedError

  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None) -> Adapters:
    del config
    return select(self.task_table(params), task_ids, self.name, self.num_tasks)

  def fold(self, params: PyTree, config: T5Config) -> PyTree:
    del config
    return {FOLDED: self.task_table(params)}

  def export(
    self, params: PyTree, config: T5Config, folder: str | Path, metadata: dict[str, str] | None = None
  ) -> list[Path]:
    return export(self.task_table(params), self.name, folder, self.settings(), metadata)

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    return load(self.name, folder, self.num_tasks, config.emb_dim)

  @classmethod
  def export_file(cls) -> None:
    return None  # the library takes its per-task prompts (method "prompt"), not the table

  @classmethod
  def unserved_reason(cls) -> str:
    return upload_refusal(cls.name)

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    del arrays, limits
    raise PromptError(upload_refusal(cls.name))
