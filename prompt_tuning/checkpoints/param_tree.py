"""What every reader hands back, and the checks that run before anything large is read.

A reader lists the arrays of a checkpoint as `LazyArray`s (shape now, values
later) under our parameter paths (`encoder/layers_0/attention/query/kernel`).
`validate` compares them with the tree the model expects and fails with every
problem at once; only then does `materialize` read the values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from prompt_tuning.checkpoints.errors import CheckpointError, format_list


@dataclasses.dataclass(frozen=True)
class LazyArray:
  """One array of a checkpoint, read only when asked.

  Attributes:
    shape: the shape the array will have once read (after any transpose).
    read: returns the values as a numpy array of `shape`; raises
      CheckpointError when the file cannot be read.
    source: where it lives, for messages (`model.safetensors: shared.weight`).
    flipped: whether `shape` is the transpose of the shape in the file (so
      messages can quote shapes as the file stores them).
    read_block: returns only the block `index` (a tuple of slices, one per
      axis) of the array; formats that can read part of an array (T5X's
      tensorstore zarr) set it, the others read the whole array and cut it.
  """

  shape: tuple[int, ...]
  read: Callable[[], np.ndarray]
  source: str
  flipped: bool = False
  read_block: Callable[[tuple[slice, ...]], np.ndarray] | None = None

  def block(self, index: tuple[slice, ...]) -> np.ndarray:
    """The values of `self[index]`, reading no more than the format allows."""
    return self.read_block(index) if self.read_block is not None else self.read()[index]

  def transposed(self) -> LazyArray:
    """The same array with its two axes swapped (torch [out, in] <-> our [in, out])."""
    read, block = self.read, self.block
    return LazyArray(
      tuple(reversed(self.shape)),
      lambda: read().T,
      self.source,
      not self.flipped,
      read_block=lambda index: block(tuple(reversed(index))).T,
    )

  def as_stored(self, shape: tuple[int, ...]) -> list[int]:
    """`shape` (in our layout) as the file would store it."""
    return list(reversed(shape)) if self.flipped else list(shape)


def in_memory(array: Any, source: str) -> LazyArray:
  """Wraps an array that is already in memory."""
  array = np.asarray(array)
  return LazyArray(tuple(array.shape), lambda: array, source, read_block=lambda index: array[index])


@dataclasses.dataclass
class CheckpointContents:
  """The parameters a reader found, before they are checked and read.

  Attributes:
    arrays: our parameter path -> array.
    unrecognized: names in the files that map to no parameter of ours.
    location: the folder read, for messages.
    config: the architecture the files declare (Hugging Face `config.json`),
      None when they declare none (T5X).
    config_source: how to name `config` in messages.
    name_in_file: our path -> the name the format uses for it, for messages.
    read_sharded: for formats that restore straight onto shardings themselves
      (orbax): `(shardings by path, dtype) -> jax.Arrays by path`; None for
      formats read block by block (`materialize_sharded`).
  """

  arrays: dict[str, LazyArray]
  unrecognized: list[str]
  location: str
  config: Any = None
  config_source: str = ""
  name_in_file: Callable[[str], str] = lambda path: path
  read_sharded: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = None


def flatten(tree: Mapping[str, Any], is_leaf: Callable[[Any], bool] = lambda x: False) -> dict[str, Any]:
  """Flattens nested mappings into {"a/b/c": leaf}; `is_leaf` stops the descent at some mappings."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and not is_leaf(value):
      for sub_key, leaf in flatten(value, is_leaf).items():
        flat[f"{key}/{sub_key}"] = leaf
    else:
      flat[str(key)] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`: {"a/b": x} -> {"a": {"b": x}}."""
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return tree


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
  """Our parameter path -> shape, for the model `config` describes (allocates nothing)."""
  from prompt_tuning.models.t5 import param_shapes  # The model is only needed once a checkpoint is read.

  return {path: tuple(leaf.shape) for path, leaf in flatten(param_shapes(config)).items()}


_LOAD_HINT = (
  "Pass the config the checkpoint was trained with (config=a named size or a T5Config), or check that the "
  "checkpoint is complete and is a T5 (not, e.g., a scanned-layers or UMT5 model)."
)


def validate(
  contents: CheckpointContents,
  expected: Mapping[str, tuple[int, ...]],
  config_source: str,
  hint: str = _LOAD_HINT,
) -> None:
  """Checks that `contents` holds exactly the expected parameters, with the expected shapes.

  Shapes in messages are quoted as the file stores them (e.g. PyTorch [out, in]).

  Raises:
    CheckpointError: listing every missing parameter, every unexpected one and
      every shape mismatch (name, expected, found), followed by `hint`.
  """
  found = contents.arrays
  missing = [contents.name_in_file(path) for path in sorted(set(expected) - set(found))]
  unexpected = sorted(contents.unrecognized) + [found[path].source for path in sorted(set(found) - set(expected))]
  mismatched = [
    f"{found[path].source}: expected {found[path].as_stored(expected[path])}, "
    f"found {found[path].as_stored(found[path].shape)}"
    for path in sorted(set(found) & set(expected))
    if tuple(found[path].shape) != tuple(expected[path])
  ]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing parameter(s):\n{format_list(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected parameter(s):\n{format_list(unexpected)}")
  if mismatched:
    problems.append(f"{len(mismatched)} shape mismatch(es):\n{format_list(mismatched)}")
  if problems:
    raise CheckpointError(
      f"{contents.location}: the parameters do not match the model of {config_source}.\n"
      + "\n".join(problems)
      + f"\n{hint}"
    )


def materialize(contents: CheckpointContents, dtype: Any) -> dict[str, Any]:
  """Reads every array, casts it to `dtype` and returns the nested parameter tree.

  Raises:
    CheckpointError: when an array cannot be read, or reads with another shape
      than its metadata promised (a corrupt file).
  """
  params = {}
  for path, lazy in contents.arrays.items():
    value = np.asarray(lazy.read())
    if tuple(value.shape) != tuple(lazy.shape):
      raise CheckpointError(
        f"{lazy.source} in {contents.location} read with shape {list(value.shape)} but its metadata says "
        f"{list(lazy.shape)}: the checkpoint is corrupt; copy it again from its source."
      )
    params[path] = np.ascontiguousarray(value.astype(dtype, copy=False))  # Transposed reads are views.
  return unflatten(params)


def _block_reader(lazy: LazyArray, dtype: Any, location: str) -> Callable[[tuple[slice, ...]], np.ndarray]:
  """`index -> block` for `jax.make_array_from_callback`; each distinct block is read once (replicas share it)."""
  blocks: dict[tuple, np.ndarray] = {}

  def read(index: tuple[slice, ...]) -> np.ndarray:
    index = tuple(slice(*s.indices(n)) for s, n in zip(index, lazy.shape, strict=True))
    key = tuple((s.start, s.stop) for s in index)
    if key not in blocks:
      value = np.asarray(lazy.block(index))
      expected = tuple(s.stop - s.start for s in index)
      if value.shape != expected:
        raise CheckpointError(
          f"{lazy.source} in {location} read block {list(key)} with shape {list(value.shape)}, expected "
          f"{list(expected)}: the checkpoint is corrupt; copy it again from its source."
        )
      blocks[key] = np.ascontiguousarray(value.astype(dtype, copy=False))
    return blocks[key]

  return read


def materialize_sharded(contents: CheckpointContents, dtype: Any, shardings: Mapping[str, Any]) -> dict[str, Any]:
  """Reads, for every array, only the blocks this process's devices hold, straight into `jax.Array`s.

  Args:
    contents: the validated checkpoint contents.
    dtype: the dtype of the returned arrays.
    shardings: our parameter path -> `jax.sharding.Sharding` (flat, every path of `contents`).

  Returns:
    The nested parameter tree of global `jax.Array`s laid out as `shardings` say. A
    process reads the blocks its addressable devices hold (tensorstore reads only
    the chunks they overlap); a block replicated on several local devices is read
    once.

  Raises:
    CheckpointError: when an array cannot be read or reads with the wrong shape.
  """
  import jax

  if contents.read_sharded is not None:
    return unflatten(contents.read_sharded(shardings, dtype))
  params = {}
  for path, lazy in contents.arrays.items():
    reader = _block_reader(lazy, dtype, contents.location)
    params[path] = jax.make_array_from_callback(tuple(lazy.shape), shardings[path], reader)
  return unflatten(params)
