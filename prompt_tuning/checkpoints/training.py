"""Training checkpoints: the trainable state only, through orbax's CheckpointManager.

A checkpoint (MODEL_DIR/checkpoints/<step>/) holds
- `state`: step, trainable vectors (or weights, for model tuning) and optimizer state;
- `meta` (JSON): step, the data position (batches consumed), the trainable
  pattern, and a fingerprint of the frozen backbone.

The frozen backbone is never saved: it is read from its pretrained path at
every start, and a resume against a backbone whose fingerprint differs is
refused. Orbax writes each step into a temporary folder and renames it when
complete, so a kill at any moment leaves the last finished checkpoint usable.
Beside each checkpoint a prompt is also written as `.npy`
(MODEL_DIR/numpy_checkpoints/checkpoint_<step>/prompt.npy), the format of the
reference implementation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning.checkpoints.errors import CheckpointError

PyTree = Any


def backbone_fingerprint(params: PyTree) -> str:
  """A fingerprint of the frozen backbone: paths, shapes, dtypes and per-array moments.

  Cheap (one reduction per array, on device) yet sensitive to any change of
  values that matters: a different checkpoint, size or dtype.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  stats = jax.jit(lambda xs: [(jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.abs(x.astype(jnp.float32)))) for x in xs])(
    [x for _, x in leaves]
  )
  digest = hashlib.sha256()
  for (path, x), (total, absolute) in zip(leaves, stats):
    name = jax.tree_util.keystr(path)
    digest.update(f"{name}|{x.shape}|{x.dtype}|{float(total):.6e}|{float(absolute):.6e};".encode())
  return digest.hexdigest()[:32]


class TrainingCheckpoints:
  """Saves and restores training state in MODEL_DIR.

  Args:
    model_dir: the run's directory.
    keep: checkpoints to keep (the newest); None keeps all.
    async_save: let orbax write in the background while training goes on.
  """

  def __init__(self, model_dir: str | os.PathLike, keep: int | None = 3, async_save: bool = True):
    self.model_dir = Path(model_dir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
      self.model_dir.absolute() / "checkpoints", options=options, item_names=("state", "meta")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: PyTree, meta: dict[str, Any], prompt: jax.Array | None = None) -> None:
    """Writes `state` (any pytree of arrays) and `meta` (JSON-able) for `step`."""
    meta = {**meta, "step": int(step)}
    self._manager.save(
      int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    )
    if prompt is not None and jax.process_index() == 0:
      self._write_numpy_prompt(int(step), prompt)

  def _write_numpy_prompt(self, step: int, prompt: jax.Array) -> None:
    folder = self.model_dir / "numpy_checkpoints" / f"checkpoint_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "prompt.npy.tmp"
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(jax.device_get(prompt)))
    os.replace(tmp, folder / "prompt.npy")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Restores (state, meta) of `step` (default: the latest) onto `abstract_state`'s shapes and shardings.

    Raises:
      CheckpointError: when there is no checkpoint, or it does not fit the run.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no training checkpoint in {self.model_dir / 'checkpoints'}.")
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
      )
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
        f"training checkpoint {step} in {self.model_dir} does not match this run's trainable state ({e}). "
        "It was written by a run with another prompt length, prefix setting, trainable pattern or optimizer: "
        "use a fresh MODEL_DIR, or the settings of that run."
      ) from e
    return restored["state"], dict(restored["meta"])


def check_fingerprint(meta: dict[str, Any], fingerprint: str, backbone_path: str | None) -> None:
  """Refuses to resume a run against a backbone other than the one it was trained with."""
  saved = meta.get("backbone_fingerprint")
  if saved is not None and saved != fingerprint:
    raise CheckpointError(
      f"this run's checkpoints were trained against another frozen backbone (fingerprint {saved}, "
      f"path {meta.get('backbone_path')!r}); INITIAL_CHECKPOINT_PATH={backbone_path!r} has fingerprint "
      f"{fingerprint}. Point INITIAL_CHECKPOINT_PATH at the original backbone, or use a fresh MODEL_DIR."
    )
