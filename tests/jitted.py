"""`apply(model, variables, *args, **kwargs)`: a Flax module's `model.apply(variables, *args, **kwargs)` under jax.jit.

The tests run tiny models on a few batches. Outside jit, JAX runs a T5 forward op by op and compiles each of its few
hundred primitives on its own, for every new shape: about 4 CPU seconds the first time a process sees a batch's
shapes, against under 1 for the whole forward under jit (and the numbers are float32 either way, within the tests'
tolerances). Arrays, and trees of arrays (prompts, prefixes, rngs), are traced; every other keyword (`method`, flags
such as `enable_dropout`) is static. Shape checks still raise their ValueError, while the call is traced.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

_compiled: dict[tuple, Any] = {}


def _traced(value) -> bool:
  leaves = jax.tree.leaves(value)
  return bool(leaves) and all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves)


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value  # mutable=["cache"]


def apply(model, variables, *args, **kwargs):
  """`model.apply(variables, *args, **kwargs)`, compiled once per model, static arguments and shapes."""
  traced = tuple(i for i, x in enumerate(args) if _traced(x))
  arrays = {k: v for k, v in kwargs.items() if _traced(v)}
  fixed = tuple((i, x) for i, x in enumerate(args) if i not in traced)
  static = tuple(sorted(((k, _hashable(v)) for k, v in kwargs.items() if k not in arrays), key=lambda kv: kv[0]))
  key = (model, len(args), fixed, static)
  if key not in _compiled:

    def call(variables, positional, arrays):
      full = dict(fixed) | dict(zip(traced, positional))
      return model.apply(variables, *(full[i] for i in range(len(args))), **arrays, **dict(static))

    _compiled[key] = jax.jit(call)
  return _compiled[key](variables, tuple(args[i] for i in traced), arrays)
