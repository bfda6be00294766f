"""Training checkpoints: the trainable state only, through orbax's CheckpointManager.

A checkpoint (MODEL_DIR/checkpoints/<step>/) holds
- `state`: step, trainable vectors (or weights, for model tuning) and optimizer state;
- `meta` (JSON): step, the data position (batches consumed), the trainable
  pattern, and a fingerprint of the frozen backbone.

The frozen backbone is never saved: it is read from its pretrained path at
every start, and a resume against a backbone whose fingerprint differs is
refused. Orbax writes each step into a temporary folder and renames it when
complete, so a kill at any moment leaves the last finished checkpoint usable.
Beside each checkpoint train writes every method's export (`Method.export`:
MODEL_DIR/numpy_checkpoints/checkpoint_<step>/, the prompt's `prompt.npy` in the
format of the reference implementation); `prune_exports` keeps those of the
newest `keep` steps, as orbax keeps its checkpoints.

A damaged checkpoint (a file missing, truncated or unreadable: a disk that filled up, a copy cut short) is told
apart from a mismatched one (readable, but written for other shapes: another prompt length, pattern or
optimizer). `restore_newest_intact` skips damaged ones, newest first, moving each aside into
MODEL_DIR/damaged_checkpoints/ (never deleting it) and saying why; a mismatched one is refused. The meta also
records the task and data settings (`data_settings`), and `check_data_settings` refuses a resume that changes
them: the saved data position means nothing on other data.

The meta also holds a checksum of the state's arrays (`state_checksum`), verified at restore: a bit flipped on disk
that still reads back makes the checkpoint damaged, not a silent NaN later. A save that fails (a full disk), here or
in orbax's background threads, becomes one CheckpointWriteError after the unfinished files are removed (`writing`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from prompt_tuning import storage
from prompt_tuning.checkpoints.errors import CheckpointError, format_list

PyTree = Any
log = logging.getLogger(__name__)

# The run settings that decide which examples a data position points at; a resume must keep them.
DATA_SETTINGS = {
  "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
  "task_feature_lengths": "TASK_FEATURE_LENGTHS",
  "batch_size": "BATCH_SIZE",
  "seed": "SEED",
  "shuffle": "RunConfig.shuffle",
  "pack": "PACK",
  "train_files": "TRAIN_FILE",  # a local task's train file, by content (prompt_tuning.data.local_tasks.train_files)
  "bucket_by_length": "BUCKET_BY_LENGTH",
  "buckets_per_doubling": "BUCKETS_PER_DOUBLING",
}


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files are missing, truncated or unreadable (not one written for other settings)."""


# Version 2: an exact integer hash of the backbone's values rounded to bfloat16, without their dtype, so that a run
# may resume with another FROZEN_DTYPE (the same checkpoint, float32 or cast to bfloat16, has one fingerprint), and
# on another number of cores or devices: wrapping integer sums do not depend on the order XLA reduces in, where
# float moments did (a run resumed pinned to one core was refused against its own backbone).
# Version 1 (meta without "backbone_fingerprint_version") included the dtype and the float32 moments.
FINGERPRINT_VERSION = 2
_GOLDEN = 2654435761  # Knuth's multiplicative hash constant: spreads element positions over uint32


def _bit_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two uint32 sums (mod 2**32) over the bfloat16 bit patterns of `x`: plain, and weighted by a hash of each
  element's position, so that moved values (a transposed kernel) change it too. Built from iotas, not a reshape,
  so a sharded array is reduced where it lies."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16).astype(jnp.uint32)
  position = jnp.zeros(x.shape, jnp.uint32)
  for axis, size in enumerate(x.shape):
    position = position * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
  weights = position * jnp.uint32(_GOLDEN) + jnp.uint32(1)
  return jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)


def _float_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  values = x.astype(jnp.float32)
  return jnp.sum(values), jnp.sum(jnp.abs(values))


@functools.cache
def _reductions(per_array):
  """`per_array` (a module-level function) over a list of arrays, jitted together: one jitted function per kind of
  fingerprint or checksum, so that the next one over arrays of the same shapes (a build computes several, a run one
  per checkpoint, a process may build many) reuses the compiled program instead of tracing and compiling it again."""
  return jax.jit(lambda xs: [per_array(x) for x in xs])


def _digest(params: PyTree, per_array, describe) -> str:
  """sha256 over each array's path and `describe(array, *per_array(array))`, the reductions jitted together."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  stats = _reductions(per_array)([x for _, x in leaves])
  digest = hashlib.sha256()
  for (path, x), values in zip(leaves, stats):
    digest.update(f"{jax.tree_util.keystr(path)}|{describe(x, *values)};".encode())
  return digest.hexdigest()[:32]


def dtype_names(params: PyTree) -> str:
  """The dtypes of a tree's arrays, '/'-joined ('float32', 'bfloat16'): what the meta records as frozen_dtype."""
  return "/".join(sorted({str(x.dtype) for x in jax.tree.leaves(params)}))


def backbone_fingerprint(params: PyTree) -> str:
  """A fingerprint of the frozen backbone: paths, shapes and an exact hash of its values rounded to bfloat16.

  Cheap (two integer reductions per array, on device, where the array lies) yet sensitive to any change of values
  that matters: a different checkpoint or size. Not to its precision: the backbone read in float32 or cast to
  bfloat16 (FROZEN_DTYPE) has one fingerprint, so a run trained with one may resume with the other; nor to the
  number of cores or devices it is computed on.
  """
  return _digest(params, _bit_sums, lambda x, plain, weighted: f"{x.shape}|{int(plain)}|{int(weighted)}")


def legacy_backbone_fingerprint(params: PyTree) -> str:
  """Version 1 of the fingerprint (checkpoints written before FINGERPRINT_VERSION was recorded): dtypes and float32
  moments, as they were computed then (their last digit can depend on the reduction order, so on the cores)."""
  return _digest(
    params, _float_moments, lambda x, total, absolute: f"{x.shape}|{x.dtype}|{float(total):.6e}|{float(absolute):.6e}"
  )


# The checksum of a checkpoint's arrays, written into its meta with each save and verified at restore: a bit
# flipped on disk (or in a copy) that still reads is found, and the checkpoint is skipped like any damaged one.
CHECKSUM_VERSION = 1


def _raw_bits(x: jax.Array) -> jax.Array:
  """The exact bit patterns of `x` as uint32 (every dtype: a float's bits, not its value; a key's data)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)  # 8-byte values: two uint32 [..., 2]


def _mix(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijection on uint32 in which every input bit reaches every output bit."""
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _checksum_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """state_checksum's two sums of one array (a module-level function: `_digest` compiles once per function)."""
  bits = _raw_bits(x)
  position = jnp.zeros(bits.shape, jnp.uint32)
  for axis, size in enumerate(bits.shape):
    position = position * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
  first = _mix(bits ^ _mix(position * jnp.uint32(_GOLDEN) + jnp.uint32(1)))
  second = _mix(first + position)
  return jnp.sum(first, dtype=jnp.uint32), jnp.sum(second, dtype=jnp.uint32)


def state_checksum(state: PyTree) -> str:
  """A checksum of every array of a (training) state: its paths, shapes and exact bits, each element's bits mixed
  with its position before two sums (mod 2**32), so that a flipped bit always changes it and moved or negated values
  do (unlike a linear sum, where such changes can cancel). Computed on device, where the arrays lie."""
  return _digest(state, _checksum_sums, lambda x, first, second: f"{x.shape}|{int(first)}|{int(second)}")


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (a full disk, a file size limit, a file where a folder should be)."""


class TrainingCheckpoints:
  """Saves and restores training state in MODEL_DIR.

  Args:
    model_dir: the run's directory.
    keep: checkpoints to keep (the newest); None keeps all.
    async_save: let orbax write in the background while training goes on.
  """

  def __init__(self, model_dir: str | os.PathLike, keep: int | None = 3, async_save: bool = True):
    self.model_dir = storage.path(model_dir)  # a local folder, or gs:// (storage: orbax writes there directly)
    self.keep = keep
    self._failed = False
    _drop_orbax_background_tracebacks()
    _drop_closed_loop_callbacks()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    if not storage.is_remote(self.model_dir):
      self._manager = ocp.CheckpointManager(
        self.model_dir.absolute() / "checkpoints", options=options, item_names=("state", "meta")
      )
      return
    # On gs://, each array in its own zarr folder rather than orbax's default OCDBT database: OCDBT commits with
    # conditional writes (object generations), which GCS-compatible stores without generations (the GCS emulator
    # among them) refuse at random, while a trainable state of a few small arrays gains nothing from one database.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state = ocp.StandardCheckpointHandler(use_ocdbt=False)
    registry.add("state", ocp.args.StandardSave, state)
    registry.add("state", ocp.args.StandardRestore, state)
    meta = ocp.JsonCheckpointHandler()
    registry.add("meta", ocp.args.JsonSave, meta)
    registry.add("meta", ocp.args.JsonRestore, meta)
    self._manager = ocp.CheckpointManager(self.model_dir / "checkpoints", options=options, handler_registry=registry)

  def all_steps(self) -> list[int]:
    """The steps of the checkpoint folders (a stray file named like a step is not a checkpoint)."""
    return [step for step in self._manager.all_steps() if not self.step_folder(step).is_file()]

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return max(steps) if steps else None

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Writes `state` (any pytree of arrays) and `meta` (JSON-able) for `step`, with the checksum of the arrays.

    Raises:
      CheckpointWriteError: this or an earlier (background) save failed; see `writing`.
    """
    meta = {**meta, "step": int(step), "state_checksum": state_checksum(state), "checksum_version": CHECKSUM_VERSION}
    with self.writing(step):
      self._drop_unfinished_step(int(step))
      self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
      )

  @contextlib.contextmanager
  def writing(self, step: int | None = None):
    """Turns any failure to write a checkpoint (here, or in orbax's background threads, which report it on the next
    call) into one CheckpointWriteError naming the folder and what to do, after removing what the failed save left
    behind: orbax's temporary folders and the numpy exports newer than the last finished checkpoint."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - orbax, tensorstore and the OS raise many types for one failed write
      if storage.is_remote(self.model_dir) and storage.is_unreachable(e):
        raise  # the bucket is gone: nothing can be tidied there (train reports it as a StorageError)
      self._failed = True
      with contextlib.suppress(Exception):  # let a background save still writing end (it fails the same way) first
        self._manager.wait_until_finished()
      kept = self._remove_unfinished()
      where = f"while saving step {step}" if step is not None else "in the background"
      kept_line = (
        f"The last finished checkpoint (step {kept}) is kept and the unfinished ones removed: run the same command "
        "again to resume from it."
        if kept is not None
        else "No checkpoint was finished, and the unfinished ones are removed: run the same command again."
      )
      raise CheckpointWriteError(
        f"a training checkpoint could not be written into {self.model_dir / 'checkpoints'} {where} "
        f"({_describe(e)}).\n{_write_advice(e)} {kept_line}"
      ) from e

  def _drop_unfinished_step(self, step: int) -> None:
    """On gs:// orbax writes a step in place and marks it finished last (commit_success.txt): a step folder left
    unfinished by a killed run is removed before the same step is written again (process 0; all wait for it)."""
    if not storage.is_remote(self.model_dir):
      return
    folder = self.step_folder(step)
    if jax.process_index() == 0 and folder.exists() and not storage.is_finished_step(folder):
      log.warning("removing %s: a checkpoint a stopped run left unfinished (no commit_success.txt).", folder)
      storage.rmtree(folder)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"unfinished step {step} removed")

  def _remove_unfinished(self) -> int | None:
    """Removes orbax's temporary step folders and the numpy exports past the newest finished checkpoint (process 0;
    the others' writes are to the same folders); returns that step."""
    checkpoints = self.model_dir / "checkpoints"
    entries = list(checkpoints.iterdir()) if checkpoints.is_dir() else []
    finished = [int(p.name) for p in entries if p.name.isdigit() and storage.is_finished_step(p)]
    kept = max(finished) if finished else None
    if jax.process_index() == 0 and storage.is_remote(self.model_dir):
      for folder in entries:
        if folder.name.isdigit() and (kept is None or int(folder.name) > kept):
          storage.rmtree(folder)
      for folder in (self.model_dir / "numpy_checkpoints").glob("checkpoint_*"):
        step = folder.name[len("checkpoint_") :]
        if step.isdigit() and (kept is None or int(step) > kept):
          storage.rmtree(folder)
    elif jax.process_index() == 0:
      for leftover in (self.model_dir / "checkpoints").glob("*.orbax-checkpoint-tmp*"):
        if leftover.is_symlink() or not leftover.is_dir():
          leftover.unlink(missing_ok=True)
        else:
          shutil.rmtree(leftover, ignore_errors=True)
      for folder in (self.model_dir / "numpy_checkpoints").glob("checkpoint_*"):
        step = folder.name[len("checkpoint_") :]
        if step.isdigit() and (kept is None or int(step) > kept):
          shutil.rmtree(folder, ignore_errors=True)
    return kept

  def export_folder(self, step: int) -> Path:
    """Where the methods' exports of `step` are written (MODEL_DIR/numpy_checkpoints/checkpoint_<step>)."""
    return self.model_dir / "numpy_checkpoints" / f"checkpoint_{int(step)}"

  def prune_exports(self) -> None:
    """Keeps the methods' exports of the newest `keep` steps, as orbax keeps its checkpoints."""
    if self.keep is None:
      return
    folders = {}
    for child in (self.model_dir / "numpy_checkpoints").glob("checkpoint_*"):
      step = child.name[len("checkpoint_") :]
      if step.isdigit():
        folders[int(step)] = child
    for step in sorted(folders)[: -self.keep]:
      storage.rmtree(folders[step])

  def wait(self) -> None:
    """Waits for the background saves.

    Raises:
      CheckpointWriteError: one of them failed.
    """
    with self.writing():
      self._manager.wait_until_finished()

  def abandon(self) -> None:
    """Gives up on the background saves after the storage stopped answering: `close` then waits for none (a save
    cut short stays unfinished, without commit_success.txt, and is never restored)."""
    self._failed = True

  def close(self) -> None:
    """Ends the manager's background work; after a failed save there is nothing more to wait for (its threads
    wait for a signal that never comes: the CLI ends the process, cli.main)."""
    if not self._failed:
      with self.writing():
        self._manager.close()

  def step_folder(self, step: int) -> Path:
    return self.model_dir / "checkpoints" / str(int(step))

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON meta of `step`, read directly (no orbax), for checks before anything is restored.

    Raises:
      DamagedCheckpointError: the file is missing or not a JSON object.
    """
    file = self.step_folder(step) / "meta" / "metadata"
    try:
      meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise DamagedCheckpointError(f"{file} is missing or not JSON ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
      raise DamagedCheckpointError(f"{file} holds {type(meta).__name__}, not a JSON object")
    return meta

  def _saved_shapes(self, step: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{array path: global shape} of a checkpoint's state, from orbax's metadata (no array is read).

    Raises:
      DamagedCheckpointError: the metadata is missing or unreadable.
    """
    directory = self.step_folder(step) / "state"
    directory = directory if storage.is_remote(directory) else directory.absolute()
    failure = None
    with _quiet_failed_reads():
      try:
        tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory)).tree
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        shapes = {_key_names(path): tuple(leaf.shape) for path, leaf in leaves}
      except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types on missing or bad files
        failure = _describe(e)
    if failure is not None:
      _collect_failed_reads()
      raise DamagedCheckpointError(f"{directory} has no readable metadata ({failure})")
    return shapes

  def _check_shapes(self, step: int, abstract_state: PyTree) -> None:
    """Compares the saved array paths and (global) shapes with this run's state.

    Raises:
      DamagedCheckpointError: the metadata is missing or unreadable.
      CheckpointError: readable, but written for another trainable state (a mismatch, not damage).
    """
    saved = self._saved_shapes(step)
    expected = {_key_names(path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    differing = [
      f"{'.'.join(key)}: saved {saved.get(key, 'nothing')}, this run {expected.get(key, 'nothing')}"
      for key in sorted(set(saved) | set(expected))
      if saved.get(key) != expected.get(key)
    ]
    if differing:
      raise CheckpointError(
        f"training checkpoint {step} in {self.model_dir} does not match this run's trainable state:\n"
        f"{format_list(differing, limit=5)}\nIt was written by a run with another prompt length, prefix setting, "
        "trainable pattern or optimizer: use the settings of that run, or a fresh MODEL_DIR."
      )

  def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Restores (state, meta) of `step` (default: the latest) onto `abstract_state`'s shapes and shardings.

    Raises:
      DamagedCheckpointError: its files are missing, truncated or unreadable.
      CheckpointError: when there is no checkpoint, or it does not fit the run.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no training checkpoint in {self.model_dir / 'checkpoints'}.")
    self.read_meta(step)
    self._check_shapes(step, abstract_state)
    failure = None
    with _quiet_failed_reads():
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
      except Exception as e:  # noqa: BLE001 - the shapes matched, so any failure to read is damage
        failure = _describe(e)
    if failure is not None:
      _collect_failed_reads()
      raise DamagedCheckpointError(f"its arrays cannot be read ({failure})")
    state, meta = restored["state"], dict(restored["meta"])
    saved = meta.get("state_checksum")  # checkpoints written before checksums were recorded have none
    if saved is not None and saved != state_checksum(state):
      raise DamagedCheckpointError(
        f"its arrays read back, but do not match the checksum written with them ({saved}): a bit changed on disk "
        "or in a copy"
      )
    return state, meta

  def restore_newest_intact(self, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]] | None:
    """Restores the newest checkpoint that reads back whole; None when there is none at all.

    Damaged newer ones are moved aside into MODEL_DIR/damaged_checkpoints/ (so a new save of their step can
    happen) and logged with the reason. A mismatched checkpoint is refused, not skipped: the older ones were
    written by the same settings.

    Raises:
      CheckpointError: a mismatched checkpoint, or every checkpoint damaged.
    """
    skipped = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_state, step)
      except DamagedCheckpointError as e:
        moved = self._move_aside(step)
        log.warning("skipped damaged training checkpoint %d: %s; moved it to %s.", step, e, moved)
        skipped.append(f"step {step}: {e} (moved to {moved})")
        continue
      if skipped:
        log.warning("resuming from step %d, the newest intact checkpoint in %s.", step, self.model_dir)
      return restored
    if skipped:
      raise CheckpointError(
        f"every training checkpoint in {self.model_dir} is damaged:\n{format_list(skipped)}\nUse a fresh MODEL_DIR, "
        "or start from a saved prompt (numpy_checkpoints/) with prompts.from_file."
      )
    return None

  def _move_aside(self, step: int) -> Path:
    target = self.model_dir / "damaged_checkpoints" / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      suffix = 1
      while target.exists():
        target, suffix = self.model_dir / "damaged_checkpoints" / f"{step}.{suffix}", suffix + 1
      storage.move(self.step_folder(step), target)
    self._manager.reload()
    return target


def newest_meta(model_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The meta of MODEL_DIR's newest checkpoint whose meta reads, found without orbax (before the backbone loads)."""
  folder = storage.path(model_dir) / "checkpoints"
  entries = folder.iterdir() if folder.is_dir() else []
  steps = sorted((int(p.name) for p in entries if p.name.isdigit() and storage.is_finished_step(p)), reverse=True)
  for step in steps:
    try:
      meta = json.loads((folder / str(step) / "meta" / "metadata").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
      continue
    if isinstance(meta, dict):
      return meta
  return None


def _write_advice(error: Exception) -> str:
  """What to do about a failed write, from its cause (the OS's errno, or tensorstore's text for it)."""
  causes = [error, *(c for c in (error.__cause__, error.__context__) if c is not None)]
  numbers = {getattr(c, "errno", None) for c in causes}
  text = " ".join(str(c) for c in causes)
  # numpy reports a short write as "N requested and M written", without an errno.
  if numbers & {errno.ENOSPC, errno.EFBIG, errno.EDQUOT} or re.search(
    r"No space|File too large|quota|requested and \d+ written", text
  ):
    return "The disk is full (or a file size limit or quota was reached): free space or set another MODEL_DIR."
  if numbers & {errno.ENOTDIR, errno.EEXIST} or "Not a directory" in text:
    return "A file stands where a checkpoint folder should be: move it out of MODEL_DIR/checkpoints."
  if numbers & {errno.EACCES, errno.EPERM, errno.EROFS} or "ermission denied" in text:
    return "The folder is not writable: fix its permissions, or set another MODEL_DIR."
  return "Check that MODEL_DIR is writable and has free space."


class _OrbaxBackgroundTracebacks(logging.Filter):
  """Drops the tracebacks orbax's background save threads log when a write fails: orbax raises the same error again
  to the trainer (on its next save or wait), which reports it once, as a CheckpointWriteError."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
    return not (from_orbax and record.levelno >= logging.ERROR and record.exc_info)


def _drop_orbax_background_tracebacks() -> None:
  target = logging.getLogger("absl")  # orbax logs through absl's logger
  if not any(isinstance(f, _OrbaxBackgroundTracebacks) for f in target.filters):
    target.addFilter(_OrbaxBackgroundTracebacks())


def _describe(error: Exception) -> str:
  reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
  return f"{type(error).__name__}: {reason}"


@contextlib.contextmanager
def _quiet_failed_reads():
  """Keeps a failed tensorstore read's leftovers from printing "Event loop is closed" tracebacks.

  When a read fails, tensorstore's threads still finish the other reads of that call and hand each result to an
  asyncio loop that orbax has already closed: every hand-over raises RuntimeError('Event loop is closed') in a
  background thread, reported through sys.unraisablehook -- harmless, but a traceback flood, and it can happen
  any time after the failure. So the filter stays installed from the first read onward (once per hook chain), and
  drops only that error raised by asyncio's thread-safe scheduling; everything else goes to the previous hook.
  After a failed read, `_collect_failed_reads` makes the leftovers surface at once, while this filter is the hook.
  """
  _drop_closed_loop_callbacks()
  yield


def _collect_failed_reads() -> None:
  """Collects a failed read's leftovers now (see _quiet_failed_reads). Only after a failure: a full collection costs
  about 0.3 CPU seconds in a process that has TensorFlow and JAX loaded, and a read that succeeded leaves nothing."""
  gc.collect()


def _drop_closed_loop_callbacks() -> None:
  """Installs the unraisable-error filter of _quiet_failed_reads (once per hook chain); failed writes leave the same
  late results behind."""
  if not getattr(sys.unraisablehook, "_drops_closed_loop_callbacks", False):
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _is_closed_loop_callback(unraisable):
        previous(unraisable)

    hook._drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def _is_closed_loop_callback(unraisable) -> bool:
  """Whether an unraisable error is a late result handed to a closed asyncio loop (see _quiet_failed_reads)."""
  if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
    return False
  frames = [frame.name for frame in traceback.extract_tb(unraisable.exc_traceback)]
  return "call_soon_threadsafe" in frames


def _key_names(path) -> tuple[str, ...]:
  """A jax key path as names: dict keys, attribute names (named tuples, dataclasses) and list indices alike, so
  this run's TrainState and orbax's metadata tree (named tuples saved as dicts) compare."""
  names = []
  for entry in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(entry, attribute):
        names.append(str(getattr(entry, attribute)))
        break
  return tuple(names)


def data_settings(cfg: Any) -> dict[str, Any]:
  """The settings of `cfg` (a RunConfig) that decide the data a checkpoint's data position points into."""
  from prompt_tuning.data import local_tasks

  settings = {
    name: dict(getattr(cfg, name)) if name == "task_feature_lengths" else getattr(cfg, name)
    for name in DATA_SETTINGS
    if name != "train_files"
  }
  return settings | {"train_files": local_tasks.train_files(cfg.mixture_or_task_name)}


def _changed_train_file(saved: dict, now: dict, model_dir, position) -> str | None:
  """Why a local task's train file is other data than the run was trained on (compared by content), or None."""
  for task, before in saved.items():
    after = now.get(task)
    if after is not None and after["sha256"] != before["sha256"]:
      return (
        f"{model_dir} was trained on local task {task!r} with TRAIN_FILE {before['path']!r}; this run's train file "
        f"{after['path']!r} holds other data (its content differs). Its saved data position (batch {position}) would "
        "be reused on other data: give back the file it was trained on to resume, or use a fresh MODEL_DIR (with "
        "prompts.from_file to start from its prompt)."
      )
  return None


def check_data_settings(meta: dict[str, Any] | None, settings: dict[str, Any], model_dir: str | os.PathLike) -> None:
  """Refuses to resume a run on other data than its checkpoints were trained on.

  Checkpoints written before these settings were recorded are not checked.

  Raises:
    CheckpointError: naming the first setting that differs, its saved and its new value.
  """
  if not meta:
    return
  changed = _changed_train_file(
    meta.get("train_files") or {}, settings["train_files"], model_dir, meta.get("data_position")
  )
  if changed:
    raise CheckpointError(changed)
  for name, macro in DATA_SETTINGS.items():
    if name == "train_files":
      continue
    if name in meta and meta[name] != settings[name]:
      raise CheckpointError(
        f"{model_dir} was trained with {macro} = {meta[name]!r}; this run sets {settings[name]!r}. Its saved data "
        f"position (batch {meta.get('data_position')}) would be reused on other data: set {macro} = {meta[name]!r} "
        "to resume, or use a fresh MODEL_DIR (with prompts.from_file to start from its prompt)."
      )


def check_fingerprint(meta: dict[str, Any], backbone: PyTree, backbone_path: str | None) -> None:
  """Refuses to resume a run against a backbone other than the one it was trained with.

  Another precision of the same backbone (FROZEN_DTYPE) is allowed (train reports it). A checkpoint of fingerprint
  version 1 (dtype included) is compared with version 1 of `backbone`'s fingerprint.

  Raises:
    CheckpointError: naming both fingerprints and what to do.
  """
  saved = meta.get("backbone_fingerprint")
  if saved is None:
    return
  legacy = meta.get("backbone_fingerprint_version") is None
  fingerprint = legacy_backbone_fingerprint(backbone) if legacy else backbone_fingerprint(backbone)
  dtypes = dtype_names(backbone)
  if saved != fingerprint:
    hint = ""
    if legacy and dtypes != "float32":
      hint = (
        " The checkpoint predates precision-independent fingerprints, so a backbone cast to "
        f"{dtypes} cannot match it: resume once with FROZEN_DTYPE = None (its next checkpoint records the "
        "new fingerprint), then with FROZEN_DTYPE as you like."
      )
    elif legacy:
      hint = (
        " The checkpoint predates exact fingerprints: its float moments can differ in the last digit on another "
        "number of cores or devices. If INITIAL_CHECKPOINT_PATH is the original backbone, resume once on the cores "
        "and devices it was trained on (a sweep: without --parallel); its next checkpoint records the exact one."
      )
    raise CheckpointError(
      f"this run's checkpoints were trained against another frozen backbone (fingerprint {saved}, "
      f"path {meta.get('backbone_path')!r}); INITIAL_CHECKPOINT_PATH={backbone_path!r} has fingerprint "
      f"{fingerprint}. Point INITIAL_CHECKPOINT_PATH at the original backbone, or use a fresh MODEL_DIR.{hint}"
    )
