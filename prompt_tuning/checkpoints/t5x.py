"""Readers for T5X checkpoints: the legacy msgpack + tensorstore layout (local or gs://), and orbax.

Legacy layout (`checkpoint_N/`): a msgpack file `checkpoint` holding
`{"version": 3, "optimizer": {"target": params, "state": optimizer state}}`.
Small arrays sit inline (flax's msgpack array encoding); each large one is a
tensorstore spec (`{"driver": "zarr", "kvstore": {"driver": "gfile", "path":
"target.encoder.layers_0.mlp.wi_0.kernel"}, "metadata": {...}}`) pointing to a
zarr folder beside the file.

Early orbax versions wrote the legacy layout with `"PLACEHOLDER://target.x.y"`
strings in place of the specs; those are read the same way.

Orbax layout (newer T5X): an orbax PyTree checkpoint (`_METADATA`,
`manifest.ocdbt`, ...) of `{"target": params, "state": ...}`, directly in
`checkpoint_N/` or in one item folder under it (`checkpoint_N/state/`, or
`N/default/` as orbax's CheckpointManager writes it).

Only the parameters (`target`) are read; the optimizer state is skipped.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from prompt_tuning.checkpoints import remote
from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.param_tree import CheckpointContents, LazyArray, flatten, in_memory, unflatten

LEGACY_FILE = "checkpoint"
# A PyTree item folder; `_CHECKPOINT_METADATA` alone marks a step folder whose items are subfolders.
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt")
_ORBAX_PLACEHOLDER = "PLACEHOLDER://"
# T5X names step folders checkpoint_N; orbax's CheckpointManager names them N.
_STEP_DIR = re.compile(r"^(?:checkpoint_)?(\d+)$")
# Item folders (of an orbax step folder) that hold the model rather than, e.g., the data iterator.
_MODEL_ITEMS = ("state", "default", "params", "model")
# Where T5X and orbax users put the parameters inside the saved tree.
_TARGET_KEYS = (("optimizer", "target"), ("target",), ("params",))


def latest_step_dir(path: str) -> str | None:
  """The `checkpoint_N` (or `N`) folder with the largest N directly under `path` (local or gs://), or None."""
  steps = [(int(m.group(1)), name) for name in remote.child_folders(path) if (m := _STEP_DIR.match(name))]
  return remote.join(path, max(steps)[1]) if steps else None


def orbax_item_dir(path: str) -> str | None:
  """The folder holding an orbax PyTree checkpoint at or just under `path`, or None."""
  if not os.path.isdir(path):
    return None
  if any(os.path.exists(os.path.join(path, marker)) for marker in _ORBAX_MARKERS):
    return path
  names = [name for name in sorted(os.listdir(path)) if not _STEP_DIR.match(name)]
  items = [name for name in names if os.path.exists(os.path.join(path, name, "_METADATA"))]
  if len(items) > 1:  # E.g. T5X's "state" beside a "dataset" item.
    items = [name for name in items if name in _MODEL_ITEMS]
  return os.path.join(path, items[0]) if len(items) == 1 else None


def is_legacy(path: str) -> bool:
  """Whether `path` (local or gs://) is a legacy T5X checkpoint folder (a msgpack `checkpoint`, no orbax metadata)."""
  if remote.is_gcs(path):  # Exact lookups: listing a large checkpoint's chunks takes many requests.
    exists = lambda name: remote.is_file(remote.join(path, name))
    return exists(LEGACY_FILE) and not any(exists(marker) for marker in _ORBAX_MARKERS)
  return os.path.isfile(os.path.join(path, LEGACY_FILE)) and orbax_item_dir(path) is None


def _find_target(tree: Mapping[str, Any], location: str) -> Mapping[str, Any]:
  for keys in _TARGET_KEYS:
    node: Any = tree
    for key in keys:
      node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping):
      return node
  if isinstance(tree, Mapping) and "token_embedder" in tree:
    return tree  # A bare parameter tree.
  keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
  raise CheckpointError(
    f"No parameters in the T5X checkpoint at {location}: expected them under 'optimizer/target' or 'target' "
    f"(top-level keys: {keys}). Point to a checkpoint_N folder written by T5X."
  )


# ---------------------------------------------------------------------------
# Legacy msgpack + tensorstore.


def _is_tensorstore_spec(node: Any) -> bool:
  return isinstance(node, Mapping) and "driver" in node


def _zarr_path(spec: Mapping[str, Any], step_dir: str) -> str:
  """The local folder of the array `spec` names; T5X writes paths relative to the step folder."""
  kvstore = spec.get("kvstore")
  relative = kvstore.get("path") if isinstance(kvstore, Mapping) else spec.get("path", kvstore)
  if not isinstance(relative, str):
    raise CheckpointError(f"A tensorstore spec in {step_dir}/{LEGACY_FILE} names no path: {dict(spec)}.")
  if "://" in relative or os.path.isabs(relative):
    # Written elsewhere (e.g. gs://bucket/...): the folder travels with the checkpoint under the same name.
    relative = relative.rstrip("/").rsplit("/", 1)[-1]
  return remote.join(step_dir, relative)


def _open_zarr(spec: Mapping[str, Any], folder: str):
  """The tensorstore of the zarr array in `folder` (local or gs://), opened for reading; nothing is read yet."""
  import tensorstore as ts  # Imported here: a heavy import only T5X checkpoints need.

  located = {
    "driver": spec.get("driver", "zarr"),
    "kvstore": remote.kvstore_spec(folder),
    # A missing chunk would otherwise read silently as the fill value (zeros).
    "fill_missing_data_reads": False,
  }
  try:
    return ts.open(located, open=True, read=True).result()
  except Exception as e:  # tensorstore raises ValueError / RuntimeError subclasses for I/O and decoding.
    raise _zarr_error(folder, e) from e


def _zarr_error(folder: str, error: Exception) -> CheckpointError:
  return CheckpointError(
    f"Cannot read the array in {folder}: {error}\nA chunk file or the .zarray file is missing or corrupt; copy the "
    "whole checkpoint folder again (the `checkpoint` file and every target.* folder with all its chunks)."
  )


def _read_zarr(store, folder: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
  """The whole array, or only the block `index` (tensorstore reads just the chunks it overlaps)."""
  try:
    return np.asarray((store if index is None else store[index]).read().result())
  except Exception as e:
    raise _zarr_error(folder, e) from e


def _spec_shape(spec: Mapping[str, Any], open_store) -> tuple[int, ...]:
  metadata = spec.get("metadata")
  if isinstance(metadata, Mapping) and "shape" in metadata:
    return tuple(int(n) for n in metadata["shape"])
  return tuple(open_store().shape)


def _legacy_leaf(path: str, leaf: Any, step_dir: str) -> LazyArray:
  if isinstance(leaf, str) and leaf.startswith(_ORBAX_PLACEHOLDER):
    # Early orbax (before _METADATA) wrote the same layout with placeholders instead of specs.
    leaf = {"driver": "zarr", "kvstore": {"path": leaf[len(_ORBAX_PLACEHOLDER) :]}}
  if _is_tensorstore_spec(leaf):
    folder = _zarr_path(leaf, step_dir)
    store = functools.cache(functools.partial(_open_zarr, leaf, folder))
    return LazyArray(
      _spec_shape(leaf, store),
      lambda: _read_zarr(store(), folder),
      f"{path} ({folder.rstrip('/').rsplit('/', 1)[-1]})",
      read_block=lambda index: _read_zarr(store(), folder, index),
    )
  if isinstance(leaf, (np.ndarray, np.generic, int, float)):
    return in_memory(leaf, path)
  raise CheckpointError(
    f"Parameter {path} in {step_dir}/{LEGACY_FILE} is neither an inline array nor a tensorstore reference "
    f"(found {type(leaf).__name__}); this is not a T5X checkpoint this reader knows."
  )


def _read_msgpack(file: str) -> Any:
  from flax import serialization

  data = remote.read_bytes(file)
  try:
    return serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...) on bad bytes.
    raise CheckpointError(
      f"{file} is not a readable msgpack file ({type(e).__name__}: {e}); it is truncated or corrupt. "
      "Copy the checkpoint again from its source."
    ) from e


def read_legacy(step_dir: str) -> CheckpointContents:
  """Lists the parameters of a legacy T5X checkpoint folder (`checkpoint_N/`); nothing large is read yet.

  Raises:
    CheckpointError: for a corrupt msgpack file, a tree without parameters, or
      an entry that is neither an array nor a tensorstore reference.
  """
  tree = _read_msgpack(remote.join(step_dir, LEGACY_FILE))
  target = _find_target(tree, step_dir)
  leaves = flatten(target, is_leaf=_is_tensorstore_spec)
  arrays = {path: _legacy_leaf(path, leaf, step_dir) for path, leaf in leaves.items()}
  return CheckpointContents(arrays=arrays, unrecognized=[], location=step_dir)


# ---------------------------------------------------------------------------
# Orbax.


def _orbax_metadata_tree(item_dir: str) -> Mapping[str, Any]:
  import orbax.checkpoint as ocp

  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(item_dir)
  except Exception as e:
    raise CheckpointError(
      f"Cannot read the orbax metadata of {item_dir}: {e}\nThe checkpoint is incomplete or corrupt (was it still "
      "being written?); copy it again or point to an earlier checkpoint_N."
    ) from e
  tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", getattr(metadata, "item_metadata", metadata))
  if not isinstance(tree, Mapping):
    raise CheckpointError(
      f"The orbax checkpoint at {item_dir} has no readable tree of arrays (found {type(tree).__name__}): its "
      "metadata (_METADATA, manifest.ocdbt, d/) is missing or corrupt. Copy the whole checkpoint folder again."
    )
  return tree


def _target_keys(tree: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[str, ...]:
  for keys in _TARGET_KEYS:
    node: Any = tree
    for key in keys:
      node = node.get(key) if isinstance(node, Mapping) else None
    if node is target:
      return keys
  return ()


def _nest(keys: tuple[str, ...], value: Any) -> Any:
  for key in reversed(keys):
    value = {key: value}
  return value


def _restore_orbax_target(
  item_dir: str,
  keys: tuple[str, ...],
  target: Mapping[str, Any],
  shardings: Mapping[str, Any] | None = None,
  dtype=None,
) -> dict[str, Any]:
  """Restores only the parameters, skipping the optimizer state.

  Without `shardings`: numpy arrays. With them (our path -> Sharding): jax.Arrays
  laid out so, orbax (tensorstore) reading only this process's shards.
  """
  import jax
  import orbax.checkpoint as ocp

  is_leaf = lambda x: not isinstance(x, Mapping)
  if shardings is None:
    item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), target, is_leaf=is_leaf)
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), target, is_leaf=is_leaf)
  else:
    flat = {path: (meta, shardings[path]) for path, meta in flatten(target).items()}
    item = unflatten({p: jax.ShapeDtypeStruct(tuple(m.shape), dtype, sharding=s) for p, (m, s) in flat.items()})
    restore_args = unflatten({p: ocp.ArrayRestoreArgs(sharding=s, dtype=dtype) for p, (_, s) in flat.items()})
  args = ocp.args.PyTreeRestore(item=_nest(keys, item), restore_args=_nest(keys, restore_args), partial_restore=True)
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(item_dir, args=args)
  except Exception as e:
    raise CheckpointError(
      f"Cannot restore the parameters of the orbax checkpoint at {item_dir}: {e}\nIts data files are missing or "
      "corrupt; copy the whole checkpoint folder again."
    ) from e
  for key in keys:
    restored = restored[key]
  return flatten(restored)


def read_orbax(item_dir: str) -> CheckpointContents:
  """Lists the parameters of an orbax (T5X) checkpoint from its metadata; values are read on first use.

  Raises:
    CheckpointError: for unreadable metadata or a tree without parameters.
  """
  tree = _orbax_metadata_tree(item_dir)
  target = _find_target(tree, item_dir)
  keys = _target_keys(tree, target)
  restore = functools.cache(lambda: _restore_orbax_target(item_dir, keys, target))
  arrays = {
    path: LazyArray(tuple(meta.shape), functools.partial(lambda p: restore()[p], path), path)
    for path, meta in flatten(target).items()
  }
  read_sharded = functools.partial(_restore_orbax_target, item_dir, keys, target)
  return CheckpointContents(arrays=arrays, unrecognized=[], location=item_dir, read_sharded=read_sharded)
