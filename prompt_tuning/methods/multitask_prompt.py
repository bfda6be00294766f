"""Multi-task prompts (the reference implementation's `extended/multitask_prompts.py`): one prompt shared by every
task plus a small part of each task's own, combined into the task's prompt, which joins the input as a soft prompt
does (`prompt_tuning.combine`).

The combinations (`combination`, the reference's classes in parentheses), with P the shared length, D the
embedding width and T tasks:

- "add" (AddMultiTaskPrompt): shared [P, D] + task [P, D];
- "concat" (ConcatMultiTaskPrompt): the shared [P, D] then the task's [P_t, D] (`task_length`, default P), a
  prompt of P + P_t vectors;
- "concat_features" (ConcatFeaturesMultiTaskPrompt): shared [P, H_s] and task [P, H_t] side by side along the
  features, H_s + H_t = D (`shared_features`, `task_features`; give either);
- "project" (ProjectMultiTaskPrompt): shared [P, H_s] (`shared_features`, default D) through the task's affine map,
  shared @ kernel [H_s, D] + bias [D].

Trainable tree: {"shared": [P, H_s], "tasks": [T, ...]} ("tasks" [T, P, D] for add, [T, P_t, D] for concat,
[T, P, H_t] for concat_features; for project {"kernel": [T, H_s, D], "bias": [T, D]}), drawn uniform in
[-init_scale, init_scale] (Lester et al.'s prompt initialization; the reference draws from its gin's
`linen.initializers.uniform`), or the shared prompt from `initializer` when it is D wide (e.g. sampled vocab).

Each row's task is the sentinel its input opens with (the `task_index_` tasks and mixtures; the reference's
`sentinel_to_task`), read by the data path (`prompt_tuning.inputs`): the sentinel stays in the input, as in the
reference. The serving form and export are every task's prompt (`prompt_tuning.methods.task_prompts`).
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from prompt_tuning import prompts
from prompt_tuning.methods import task_prompts
from prompt_tuning.methods.base import PyTree
from prompt_tuning.models.configs import T5Config

COMBINATIONS = ("add", "concat", "concat_features", "project")


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class MultiTaskPrompt(task_prompts.TaskTableMethod):
  """A shared prompt and per-task parts (module docstring).

  Attributes:
    length: P, the shared prompt's length (the reference's `length`, PROMPT_LENGTH).
    num_tasks: T, the tasks told apart (the reference's NUM_TASKS): task_index_ tasks 0 .. T - 1.
    combination: one of COMBINATIONS.
    task_length: "concat": the task part's length P_t (default P).
    shared_features: "concat_features" / "project": the shared prompt's width H_s.
    task_features: "concat_features": the task part's width H_t (H_s + H_t = D); "project": its output width,
      which must be D.
    initializer: the shared prompt's initializer when it is D wide (a `prompts` initializer); None: uniform.
    init_scale: the uniform initialization's range [-init_scale, init_scale].
  """

  length: int
  num_tasks: int
  combination: str = "add"
  task_length: int | None = None
  shared_features: int | None = None
  task_features: int | None = None
  initializer: prompts.Initializer | None = None
  init_scale: float = 0.5
  name = "multitask_prompt"
  leaves = (("input", "prompt"),)  # it feeds the input site; a server takes its per-task prompts as "prompt" rows

  def __post_init__(self):
    if self.combination not in COMBINATIONS:
      raise ValueError(f"MultiTaskPrompt.combination={self.combination!r}; use one of {COMBINATIONS}.")
    if not isinstance(self.length, int) or self.length < 1:
      raise ValueError(f"MultiTaskPrompt.length must be >= 1, got {self.length!r}; set PROMPT_LENGTH.")
    task_prompts.check_task_count("MultiTaskPrompt", self.num_tasks)
    given = {
      "task_length": self.task_length is not None and self.combination != "concat",
      "shared_features": self.shared_features is not None and self.combination not in ("concat_features", "project"),
      "task_features": self.task_features is not None and self.combination not in ("concat_features", "project"),
    }
    unread = [k for k, v in given.items() if v]
    if unread:
      raise ValueError(
        f"MultiTaskPrompt.{unread[0]} is not read by combination {self.combination!r}: task_length is concat's, "
        "shared_features and task_features are concat_features' and project's; unset it."
      )
    for key in ("task_length", "shared_features", "task_features"):
      value = getattr(self, key)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"MultiTaskPrompt.{key} must be a positive integer, got {value!r}.")
    if self.combination == "concat_features" and self.shared_features is None and self.task_features is None:
      raise ValueError(
        "MultiTaskPrompt(combination='concat_features') splits the embedding width between the shared prompt and "
        "the task's: set shared_features or task_features (they add up to the model's embedding width)."
      )

  @property
  def input_length(self) -> int:
    return self.length + (self.task_length or self.length if self.combination == "concat" else 0)

  def widths(self, emb_dim: int) -> tuple[int, int]:
    """(H_s, H_t) for this backbone; H_t is the task part's width (project: its output width).

    Raises:
      ValueError: widths that do not make a D-wide prompt.
    """
    shared, task = emb_dim, emb_dim
    if self.combination == "concat_features":
      shared = self.shared_features if self.shared_features is not None else emb_dim - self.task_features
      task = self.task_features if self.task_features is not None else emb_dim - shared
      if shared < 1 or task < 1 or shared + task != emb_dim:
        raise ValueError(
          f"MultiTaskPrompt concat_features: shared_features {shared} + task_features {task} must add up to the "
          f"embedding width {emb_dim}, each at least 1."
        )
    elif self.combination == "project":
      shared = self.shared_features or emb_dim
      if self.task_features not in (None, emb_dim):
        raise ValueError(
          f"MultiTaskPrompt project: task_features {self.task_features} is the projection's output width, which "
          f"must be the embedding width {emb_dim}; unset it."
        )
    return shared, task

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    shared_width, task_width = self.widths(config.emb_dim)
    shared_key, task_key, bias_key = jax.random.split(rng, 3)

    def uniform(key, shape):
      return jax.random.uniform(key, shape, jnp.float32, -self.init_scale, self.init_scale)

    if self.initializer is not None and shared_width == config.emb_dim:
      shared = prompts.init_prompt(shared_key, self.initializer, backbone["token_embedder"]["embedding"], self.length)
    elif self.initializer is not None:
      raise ValueError(
        f"MultiTaskPrompt.initializer makes embedding-wide prompts; this shared prompt is {shared_width} wide: unset "
        "it (the shared prompt is then uniform)."
      )
    else:
      shared = uniform(shared_key, (self.length, shared_width))
    tasks_shape = {
      "add": (self.num_tasks, self.length, config.emb_dim),
      "concat": (self.num_tasks, self.task_length or self.length, config.emb_dim),
      "concat_features": (self.num_tasks, self.length, task_width),
    }
    if self.combination == "project":
      tasks = {
        "kernel": uniform(task_key, (self.num_tasks, shared_width, config.emb_dim)),
        "bias": uniform(bias_key, (self.num_tasks, config.emb_dim)),
      }
    else:
      tasks = uniform(task_key, tasks_shape[self.combination])
    return {"shared": shared, "tasks": tasks}

  def logical_axes(self, shapes: PyTree) -> PyTree:
    # A "prompt" axis name keeps Adafactor's statistics unfactored (prompt_tuning.optim), as for a soft prompt.
    axes = {"shared": PartitionSpec(*prompts.PROMPT_AXES)}
    if self.combination == "project":
      axes["tasks"] = {"kernel": PartitionSpec(None, None, "prompt_embed"), "bias": PartitionSpec(None, "prompt_embed")}
    else:
      axes["tasks"] = PartitionSpec(None, *prompts.PROMPT_AXES)
    axes[task_prompts.FOLDED] = task_prompts.FOLDED_AXES  # the folded tree (eval, infer: build_inference)
    return {k: v for k, v in axes.items() if k in shapes}

  def task_table(self, params: PyTree) -> jax.Array:
    """Every task's prompt [T, P', D] from the trained tree (or the folded one, returned as it is)."""
    if task_prompts.FOLDED in params:
      return params[task_prompts.FOLDED]
    shared, tasks = params["shared"], params["tasks"]  # shared [P, H_s]
    if self.combination == "add":
      return shared[None] + tasks
    if self.combination == "concat":
      return jnp.concatenate([jnp.broadcast_to(shared, (tasks.shape[0],) + shared.shape), tasks], axis=1)
    if self.combination == "concat_features":
      return jnp.concatenate([jnp.broadcast_to(shared, (tasks.shape[0],) + shared.shape), tasks], axis=2)
    # project: [P, H_s] @ [T, H_s, D] + [T, 1, D] -> [T, P, D]
    return jnp.einsum("ps,tsd->tpd", shared, tasks["kernel"]) + tasks["bias"][:, None, :]

  def settings(self) -> dict[str, str]:
    return {"combination": self.combination, "num_tasks": str(self.num_tasks)}
