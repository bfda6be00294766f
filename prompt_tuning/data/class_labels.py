"""The label texts of classification tasks, for the class-label prompt initializer.

In Python: `get_class_labels("taskless_super_glue_boolq_v102")` -> `["False", "True"]`; None for a task scored as
free text or a number (ReCoRD, WSC, STS-B); for a mixture, the labels of its tasks in order, without repeats.

In gin, bind the task name once and reference the labels:

  CLASS_LABELS = @prompt_tuning.data.class_labels_for_task()
  prompt_tuning.data.class_labels_for_task.task_name = %MIXTURE_OR_TASK_NAME

`class_labels_for_task` raises (rather than returning None) when the task has no labels, since a class-label
initializer cannot do anything useful then.
"""

import gin
import seqio

from prompt_tuning.data.errors import DataConfigError, UnknownTaskError

_labels_by_task: dict[str, tuple[str, ...] | None] = {}


def register_class_labels(task_name: str, labels: tuple[str, ...] | list[str] | None) -> None:
  """Records the label texts of `task_name` (None: not a classification task)."""
  _labels_by_task[task_name] = tuple(labels) if labels is not None else None


def get_class_labels(task_name: str) -> list[str] | None:
  """Returns the label texts of a task or mixture, or None when it has none.

  Raises:
    UnknownTaskError: the name is neither a registered task nor a mixture.
  """
  if task_name in _labels_by_task:
    labels = _labels_by_task[task_name]
    return list(labels) if labels is not None else None
  if task_name in seqio.MixtureRegistry.names():
    return _mixture_labels(seqio.MixtureRegistry.get(task_name))
  if task_name in seqio.TaskRegistry.names():
    return None  # A task registered elsewhere, without declared labels.
  raise UnknownTaskError(task_name, list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names()))


def _mixture_labels(mixture: seqio.Mixture) -> list[str] | None:
  labels: list[str] = []
  for task in mixture.tasks:
    for label in get_class_labels(task.name) or []:
      if label not in labels:
        labels.append(label)
  return labels or None


@gin.configurable(module="prompt_tuning.data")
def class_labels_for_task(task_name: str, labels: list[str] | tuple[str, ...] | None = None) -> list[str]:
  """Returns the label texts of `task_name` (a gin hook, see the module docstring), or `labels` when given.

  Args:
    task_name: a registered task or mixture.
    labels: CLASS_LABELS (the reference's macro): the user's label texts, which win over the task's.

  Raises:
    UnknownTaskError: the name is neither a registered task nor a mixture.
    DataConfigError: the task has no class labels.
  """
  if labels is not None:
    if isinstance(labels, str) or not labels or not all(isinstance(label, str) and label for label in labels):
      raise DataConfigError(f"CLASS_LABELS={labels!r}: give a non-empty list of label texts, e.g. ['no', 'yes']")
    return list(labels)
  labels = get_class_labels(task_name)
  if not labels:
    raise DataConfigError(
      f"task {task_name!r} has no class labels (its targets are free text or numbers); initialize the prompt "
      "another way (random, sampled vocabulary or text) instead of from class labels"
    )
  return labels
