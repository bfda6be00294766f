"""The optimizer (optax Adafactor with the prompt-tuning paper's settings) and trainable sets.

Lester et al. 2021, section 3: prompts are trained with Adafactor, learning
rate 0.3, weight decay 1e-5, second-moment decay 0.8, and parameter scaling
off. The optimizer holds state for the trainable pytree only.

A *trainable set* is a regular expression over the '/'-joined paths of the
whole parameter tree {"t5": backbone, "prompt": ..., "prefix": ..., ...}: by
default the subtrees of the tuning methods in use
(`prompt_tuning.methods.base.trainable_pattern`, e.g. `^(prompt|prefix)(/|$)`);
`.*` is model tuning; `^t5/decoder/` would tune the decoder only.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import gin
import jax
import optax
from flax import traverse_util

from prompt_tuning.validation import SettingError

PyTree = Any

EVERYTHING = r".*"

# Logical axes whose second-moment statistics are never factored: prompts are
# small, and factoring across prompt positions would couple unrelated vectors.
UNFACTORED_AXES = frozenset({"prompt", "prompt_embed", "prefix_mlp"})


def _flat(tree: PyTree) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def _nest(flat: dict[str, Any]) -> PyTree:
  return traverse_util.unflatten_dict(flat, sep="/")


def partition(params: PyTree, trainable_pattern: str, allow_empty: bool = False) -> tuple[PyTree, PyTree]:
  """Splits `params` into (trainable, frozen) by matching paths against a regex.

  `allow_empty` lets a pattern select nothing (trainable is then `{}`): evaluating or decoding the frozen model as
  it is, with no prompt, trains nothing.

  Raises:
    ValueError: when the pattern is not a valid regex, or selects nothing and `allow_empty` is False.
  """
  try:
    regex = re.compile(trainable_pattern)
  except re.error as e:
    raise ValueError(f"trainable pattern {trainable_pattern!r} is not a valid regular expression: {e}") from e
  flat = _flat(params)
  trainable = {k: v for k, v in flat.items() if regex.search(k)}
  if not trainable and not allow_empty:
    raise nothing_selected(trainable_pattern, params)
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return _nest(trainable), _nest(frozen) if frozen else {}


def nothing_selected(trainable_pattern: str, params: PyTree) -> ValueError:
  """The error for a trainable pattern that selects no parameter of the nested `params`."""
  sample = ", ".join(sorted(_flat(params))[:5])
  return ValueError(
    f"trainable pattern {trainable_pattern!r} selects no parameter, so there is nothing to train; paths look like: "
    f"{sample}. Set TRAINABLE_PATTERN to e.g. '^prompt' (prompt tuning), '^prefix' (prefix tuning) or '.*' "
    "(model tuning); with PROMPT_LENGTH = 0 and no prefix there is no prompt to train."
  )


def merge(trainable: PyTree, frozen: PyTree) -> PyTree:
  """The inverse of `partition`."""
  if not trainable:
    return frozen
  return _nest({**_flat(frozen), **_flat(trainable)}) if frozen else trainable


def count(tree: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def _unfactored_labels(logical_axes: PyTree) -> PyTree:
  def label(spec) -> str:
    return "unfactored" if any(name in UNFACTORED_AXES for name in spec if name) else "factored"

  return jax.tree.map(label, logical_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def _check_learning_rate(learning_rate) -> None:
  if callable(learning_rate):
    return  # a schedule: its values are its own
  if not isinstance(learning_rate, numbers.Real) or isinstance(learning_rate, bool) or not math.isfinite(learning_rate):
    raise SettingError(
      f"adafactor.learning_rate must be a finite number or an optax schedule, got {learning_rate!r}: set e.g. "
      "--gin.adafactor.learning_rate=0.3 (the paper's)."
    )
  if learning_rate < 0:
    raise SettingError(
      f"adafactor.learning_rate is {learning_rate}: a negative rate climbs the loss instead of lowering it. Set a "
      "positive one (the paper: 0.3 for prompts)."
    )


@gin.configurable
def adafactor(
  learning_rate: float | optax.Schedule = 0.3,
  decay_rate: float = 0.8,
  weight_decay_rate: float | None = 1e-5,
  multiply_by_parameter_scale: bool = False,
  clipping_threshold: float | None = 1.0,
  min_dim_size_to_factor: int = 128,
  logical_axes: PyTree | None = None,
) -> optax.GradientTransformation:
  """Adafactor with the defaults of Lester et al. 2021 (section 3).

  Args:
    learning_rate: a constant or an optax schedule (the paper: constant 0.3).
    decay_rate: exponent of the second-moment decay, 1 - t^-0.8.
    weight_decay_rate: decoupled weight decay (the paper: 1e-5).
    multiply_by_parameter_scale: scale updates by the parameter's RMS (off in the paper).
    clipping_threshold: update clipping by block RMS (Adafactor's default 1.0).
    min_dim_size_to_factor: factor only dimensions at least this large.
    logical_axes: the trainable tree's logical axes (PartitionSpecs); leaves
      with a prompt axis get unfactored statistics. None: factor everything
      that is large enough.

  Raises:
    SettingError: a constant learning rate that is negative (gradient ascent) or not a finite number.
  """
  _check_learning_rate(learning_rate)

  def make(factored: bool) -> optax.GradientTransformation:
    return optax.adafactor(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      weight_decay_rate=weight_decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      min_dim_size_to_factor=min_dim_size_to_factor,
      factored=factored,
    )

  if logical_axes is None:
    return make(True)
  return optax.multi_transform({"factored": make(True), "unfactored": make(False)}, _unfactored_labels(logical_axes))
