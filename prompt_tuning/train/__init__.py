"""The training entry point (gin-configured, t5x-style).

    prompt-tuning train --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'"
    python -m prompt_tuning.train --gin_file=... (the same)

Restore order at start-up (ARCHITECTURE.md): the latest training checkpoint in
MODEL_DIR; else the trainable state given explicitly (a prompt file or PEFT
adapter through `prompt_tuning.prompts.from_file`); else fresh initialization.
The frozen backbone always comes from INITIAL_CHECKPOINT_PATH.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np

from prompt_tuning import interrupts, locks, optim, partitioning, storage, validation
from prompt_tuning.checkpoints import training as training_checkpoints
from prompt_tuning.run import Run, RunConfig, pattern_of, plan  # noqa: F401  (train.plan: the planner's entry)
from prompt_tuning.run import build_training as build
from prompt_tuning.tuning import TunedT5

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """A run that cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def _save(run: Run, cfg: RunConfig, step: int, data_position: int, lock: locks.DirectoryLock | None = None) -> None:
  """Writes the checkpoint of `step` and the methods' exports, after checking this run still holds MODEL_DIR's lock.

  Raises:
    locks.FolderInUseError: the lock file was deleted or replaced (another writer may have started).
    CheckpointWriteError: the checkpoint could not be written (what it left behind is removed).
  """
  _check_lock(lock)
  meta = {
    "data_position": data_position,
    "backbone_fingerprint": run.fingerprint,
    "backbone_fingerprint_version": training_checkpoints.FINGERPRINT_VERSION,
    "frozen_dtype": run.backbone_dtype,
    "backbone_path": str(cfg.initial_checkpoint_path),
    "trainable_pattern": pattern_of(cfg, run.tuned),
    "methods": [method.name for method in run.tuned.methods],
    "frozen_inputs": {m.name: m.frozen_inputs() for m in run.tuned.methods if m.frozen_inputs()},
    **training_checkpoints.data_settings(cfg),
  }
  trainable = run.state.trainable if isinstance(run.state.trainable, dict) else {}
  run.checkpoints.save(step, run.state, meta)
  if jax.process_index() == 0:
    with run.checkpoints.writing(step):
      backbone = {
        "backbone_fingerprint": run.fingerprint,
        "backbone_fingerprint_version": str(training_checkpoints.FINGERPRINT_VERSION),
        "backbone_path": str(cfg.initial_checkpoint_path),
      }
      _export(run.tuned, trainable, run.checkpoints.export_folder(step), backbone)
      run.checkpoints.prune_exports()


def _export(tuned: TunedT5, trainable: dict[str, Any], folder, metadata: dict[str, str]) -> None:
  """`export_methods` into a local folder, or for gs:// into a local staging folder then uploaded (the methods
  write their files with numpy and safetensors, which write local files only). `metadata`: the backbone, recorded in
  each export's header."""
  if not storage.is_remote(folder):
    export_methods(tuned, trainable, folder, metadata)
    return
  import tempfile

  with tempfile.TemporaryDirectory(prefix="prompt_tuning_export_") as staging:
    if export_methods(tuned, trainable, Path(staging), metadata):
      storage.upload_folder(staging, folder)


def _check_lock(lock: locks.DirectoryLock | None) -> None:
  """Raises FolderInUseError on every process when process 0's lock on MODEL_DIR is no longer held (its file was
  deleted or replaced): all processes stop before the checkpoint, none waits in a save the others never join."""
  problem = None
  if lock is not None:
    try:
      lock.check()
    except locks.FolderInUseError as e:
      problem = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    lost = bool(multihost_utils.broadcast_one_to_all(np.asarray(problem is not None)))
    if lost and problem is None:
      raise locks.FolderInUseError("process 0 lost the lock on MODEL_DIR (its .lock file was deleted or replaced)")
  if problem is not None:
    raise problem


def export_methods(
  tuned: TunedT5, trainable: dict[str, Any], folder: Path, metadata: dict[str, str] | None = None
) -> list[Path]:
  """Writes every trained method's export (`Method.export`), its folded, portable form: the prompt's prompt.npy (the
  reference implementation's format), the prefix without its MLP (Li & Liang, section 4.3), IA3 scales, per-layer
  prompts, LoRA deltas; npy and safetensors, whose header records `metadata` (the backbone)."""
  written = []
  for method in tuned.methods:
    if method.name in trainable:
      written += method.export(jax.device_get(trainable[method.name]), tuned.config, folder, metadata)
  return written


@gin.configurable
def train(
  run_config: RunConfig | None = None,
  num_train_steps: int = 30000,
  checkpoint_every: int = 1000,
  eval_every: int = 0,
  eval_split: str = "validation",
  eval_max_batches: int | None = None,
  log_every: int = 10,
  stop_after: int | None = None,
) -> dict[str, Any]:
  """Trains the trainable set (by default the prompt) on a seqio task; returns the last metrics.

  Args:
    run_config: the shared settings (default: `RunConfig()` as gin binds it).
    num_train_steps: total optimizer steps (a resumed run continues up to it).
    checkpoint_every: steps between checkpoints (one is always written at the end).
    eval_every: steps between evaluations on `eval_split`, and at the end (0: never).
    eval_split: the split evaluated during training.
    eval_max_batches: cap on evaluation batches.
    log_every: steps between metric writes.
    stop_after: stop (with a checkpoint) after this many steps of this invocation.

  Returns:
    The metrics of the last logged step and of the last evaluation.
  """
  cfg = run_config if run_config is not None else RunConfig()
  schedule = {
    "num_train_steps": num_train_steps,
    "checkpoint_every": checkpoint_every,
    "eval_every": eval_every,
    "eval_split": eval_split,
    "eval_max_batches": eval_max_batches,
    "log_every": log_every,
    "stop_after": stop_after,
  }
  validation.check_schedule(num_train_steps, checkpoint_every, eval_every, log_every, stop_after, eval_max_batches)
  if storage.is_remote(cfg.model_dir):
    storage.mark_lost(None)  # an earlier run of this process may have lost its bucket; this one starts afresh
    validation.check_writable(cfg.model_dir)  # a missing or read-only bucket: refused before the lock and backbone
  else:
    Path(cfg.model_dir).mkdir(parents=True, exist_ok=True)
  # One writer per MODEL_DIR; the processes of one multi-process run share it, process 0 holds the lock.
  lock = locks.DirectoryLock(cfg.model_dir, what="training run") if jax.process_index() == 0 else None
  with lock or contextlib.nullcontext():
    return _train(cfg, schedule, lock)


def _train(cfg: RunConfig, schedule: dict[str, Any], lock: locks.DirectoryLock | None = None) -> dict[str, Any]:
  from prompt_tuning import inputs, reporting

  validation.check_writable(cfg.model_dir)
  validation.check_resume(cfg.model_dir, schedule["num_train_steps"])
  training_checkpoints.check_data_settings(
    training_checkpoints.newest_meta(cfg.model_dir), training_checkpoints.data_settings(cfg), cfg.model_dir
  )
  run = build(cfg)
  if not run.trainable_count:
    run.checkpoints.close()
    raise optim.nothing_selected(pattern_of(cfg, run.tuned), run.frozen)
  num_train_steps = schedule["num_train_steps"]
  local_batch = partitioning.local_batch_size(cfg.batch_size, run.mesh)
  reporter = reporting.Reporter(cfg.model_dir, total_steps=num_train_steps, start_step=run.start_step)
  reporter.text(
    f"trainable parameters: {run.trainable_count:,} of {run.total_count:,} "
    f"({100.0 * run.trainable_count / run.total_count:.4f}%)"
  )
  config = run.tuned.config
  reporter.text(
    f"precision: activations {config.dtype}, frozen backbone {run.backbone_dtype}, trainable float32; "
    f"remat {config.remat}"
  )
  if run.resumed_backbone_dtype not in (None, run.backbone_dtype):
    reporter.text(
      f"resumed a run trained against the frozen backbone in {run.resumed_backbone_dtype}, now in "
      f"{run.backbone_dtype} (FROZEN_DTYPE): the same weights at another precision"
    )
  validation.check_length_buckets(cfg.bucket_by_length, jax.process_count())
  batches = inputs.train_batches(
    cfg.mixture_or_task_name,
    cfg.task_feature_lengths,
    local_batch,
    config=run.tuned.config,
    seed=cfg.seed,
    start_batch=run.data_position,
    shuffle=cfg.shuffle,
    pack=cfg.pack,
    prompt_slots=run.tuned.prompt_length,
    bucket_by_length=cfg.bucket_by_length,
    buckets_per_doubling=cfg.buckets_per_doubling,
    task_count=run.tuned.task_count,
  )
  try:
    return _loop(run, cfg, schedule, batches, reporter, lock)
  except Exception as e:
    if storage.is_remote(cfg.model_dir) and storage.is_unreachable(e):
      storage.mark_lost(e)
      run.checkpoints.abandon()
      raise storage.StorageError(storage.describe_failure(cfg.model_dir, e)) from None
    raise
  finally:
    reporter.close()
    run.checkpoints.close()


def _loop(run: Run, cfg: RunConfig, schedule: dict[str, Any], batches, reporter, lock=None) -> dict[str, Any]:
  rng = jax.random.key(cfg.seed + 1)
  step, position = run.start_step, run.data_position
  end = schedule["num_train_steps"]
  if schedule["stop_after"] is not None:
    end = min(end, step + schedule["stop_after"])
  last: dict[str, Any] = {}
  tic = time.perf_counter()
  while step < end:
    interrupts.raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt a callback swallowed
    batch = partitioning.shard_batch(next(batches), run.mesh)
    run.state, metrics = run.train_step(run.state, run.frozen, batch, rng)
    step, position = step + 1, position + 1
    loss = float(metrics["loss"])
    if not (math.isfinite(loss) and math.isfinite(float(metrics["param_norm"]))):
      run.checkpoints.wait()
      good = run.checkpoints.latest_step()
      what = f"loss is {loss}" if not math.isfinite(loss) else "the updated parameters are not finite"
      kept = (
        f"The last good checkpoint (step {good}) is in {cfg.model_dir}: resume from it"
        if good is not None
        else f"No checkpoint was written yet in {cfg.model_dir}"
      )
      raise TrainingError(
        f"{what} at step {step}; stopped without saving this state. {kept}. Lower the learning rate or check the data."
      )
    elapsed, tic = time.perf_counter() - tic, time.perf_counter()
    reporter.step(step, loss, float(metrics["num_tokens"]) / max(elapsed, 1e-9))
    if step % schedule["log_every"] == 0 or step == end:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      reporter.scalars(step, last, prefix="train/")
    if step % schedule["checkpoint_every"] == 0 or step == end:
      _save(run, cfg, step, position, lock)
    if schedule["eval_every"] and (step % schedule["eval_every"] == 0 or step == end):
      last.update(_evaluate(run, cfg, schedule, reporter, step))
  run.checkpoints.wait()
  return last


def _evaluate(run: Run, cfg: RunConfig, schedule: dict[str, Any], reporter, step: int) -> dict[str, float]:
  from prompt_tuning import eval as evaluation

  metrics = evaluation.teacher_forced(
    run,
    cfg.mixture_or_task_name,
    cfg.task_feature_lengths,
    cfg.batch_size,
    schedule["eval_split"],
    schedule["eval_max_batches"],
    pack=cfg.pack,
  )
  reporter.scalars(step, metrics, prefix="eval/")
  return {f"eval/{k}": v for k, v in metrics.items()}
