"""Run settings checked up front, before the backbone loads: one clear line per mistake, saying what to set.

Every function here is pure (it reads, never changes, what it is given) and raises `SettingError` (a
`ValueError`) naming the gin macro or binding to fix:

- `check_run_config(cfg)`: the shared settings of train, eval and infer (types, ranges, consistency);
- `check_packing(pack, takes_packed_rows)`: PACK against the backbone (known once its config is read);
- `check_schedule(...)`: train's steps, checkpoint, evaluation and logging periods;
- `check_resume(...)`: a MODEL_DIR's newest checkpoint against TRAIN_STEPS;
- `check_task(name)`: the task or mixture exists and its SentencePiece model is readable;
- `check_vocabulary(...)`: the vocabulary fits the backbone's embedding rows;
- `check_has_checkpoint(...)`: eval/infer have trained vectors to use;
- `check_split(...)`, `check_num_examples(...)`: the split and example count eval/infer read;
- `check_writable(folder)`: MODEL_DIR (and its checkpoints/) can be written;
- `resolve_inside(folder, name, what)`: a file named by a checkpoint or adapter stays inside its folder.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Encoders longer than this (prompt + inputs) need MAX_ENCODER_LENGTH set explicitly: their attention scores
# alone (batch x length^2 per head and layer) outgrow any accelerator's memory long before the run starts.
UNBOUNDED_ENCODER_LIMIT = 32768
# Embedding rows beyond the vocabulary that models pad with (T5: 32,128 rows for 32,100 ids; ByT5: 384 for 259).
SPARE_EMBEDDING_ROWS = 1024
log = logging.getLogger(__name__)


class SettingError(ValueError):
  """A run setting that is wrong on its face; the message names it and says what to set."""


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_int(value: Any, setting: str, minimum: int | None = None, optional: bool = False) -> None:
  """Refuses a value that is not an integer >= `minimum` (None allowed when `optional`)."""
  if optional and value is None:
    return
  bound = "" if minimum is None else f" >= {minimum}"
  if not _is_int(value):
    raise SettingError(f"{setting} must be an integer{bound}, got {value!r} ({type(value).__name__}): set it to one.")
  if minimum is not None and value < minimum:
    raise SettingError(f"{setting} must be an integer{bound}, got {value}: set it to one.")


def _require_rate(value: Any, setting: str) -> None:
  if value is None:
    return
  if not _is_number(value) or not 0.0 <= float(value) < 1.0:
    raise SettingError(
      f"{setting} must be a number in [0, 1) (the fraction of activations dropped), got {value!r}: "
      "1.0 would drop everything; set it to 0.0-0.5 (T5 uses 0.1)."
    )


def _check_feature_lengths(lengths: Any) -> None:
  if not isinstance(lengths, Mapping) or not lengths:
    raise SettingError(
      f"TASK_FEATURE_LENGTHS must be a dict of feature lengths like {{'inputs': 512, 'targets': 128}}, got {lengths!r}."
    )
  if "targets" not in lengths:
    raise SettingError(f"TASK_FEATURE_LENGTHS {dict(lengths)} has no 'targets' length: add one, e.g. 'targets': 128.")
  for name, length in lengths.items():
    require_int(length, f"TASK_FEATURE_LENGTHS[{name!r}]", minimum=1)


def _check_encoder_length(prompt_length: int, lengths: Mapping[str, int], max_encoder_length: int | None) -> None:
  total = prompt_length + int(lengths.get("inputs", 0))
  if max_encoder_length is not None:
    if total > max_encoder_length:
      raise SettingError(
        f"prompt length {prompt_length} + input {lengths.get('inputs', 0)} exceeds max {max_encoder_length}: lower "
        "PROMPT_LENGTH or TASK_FEATURE_LENGTHS['inputs'] (or raise MAX_ENCODER_LENGTH)."
      )
  elif total > UNBOUNDED_ENCODER_LIMIT:
    raise SettingError(
      f"prompt length {prompt_length} + input {lengths.get('inputs', 0)} = {total} encoder positions, more than "
      f"{UNBOUNDED_ENCODER_LIMIT}: the attention alone would not fit in memory. Lower PROMPT_LENGTH (Lester et al. "
      f"use 100) or TASK_FEATURE_LENGTHS['inputs'], or set MAX_ENCODER_LENGTH = {total} if you mean it."
    )


ACTIVATION_DTYPES = ("float32", "bfloat16")
FROZEN_DTYPES = (None, "float32", "bfloat16")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "jnp.bfloat16": "bfloat16"}


def _check_dtype(value: Any, setting: str, allowed: tuple) -> None:
  if value in allowed:
    return
  named = ", ".join(repr(v) if v is not None else "None" for v in allowed)
  if value in ("float16", "fp16", "half"):
    why = "T5 overflows float16 (its activations outgrow 65,504 in the MLP); use 'bfloat16'"
  elif isinstance(value, str) and value.lower() in _DTYPE_ALIASES:
    why = f"set {setting} = {_DTYPE_ALIASES[value.lower()]!r}"
  else:
    why = f"set {setting} to one of them"
  raise SettingError(f"{setting} must be one of {named}, got {value!r}: {why}.")


def check_precision(activation_dtype: Any, frozen_dtype: Any, remat_policy: Any) -> None:
  """Checks ACTIVATION_DTYPE, FROZEN_DTYPE and REMAT_POLICY.

  Raises:
    SettingError: naming the macro and the values it takes.
  """
  from prompt_tuning.models.configs import REMAT_POLICIES

  _check_dtype(activation_dtype, "ACTIVATION_DTYPE", ACTIVATION_DTYPES)
  _check_dtype(frozen_dtype, "FROZEN_DTYPE", FROZEN_DTYPES)
  if remat_policy not in REMAT_POLICIES:
    hint = " (t5x's nn.remat over every layer is 'full')" if remat_policy in (True, "True", "true") else ""
    raise SettingError(
      f"REMAT_POLICY must be one of {', '.join(map(repr, REMAT_POLICIES))}, got {remat_policy!r}{hint}: 'full' "
      "keeps the least activation memory, 'dots_saveable' recomputes only elementwise work."
    )


def check_run_config(cfg: Any) -> None:
  """Checks the shared run settings (`train.RunConfig`): types, ranges and consistency.

  Raises:
    SettingError: the first setting that is wrong, named as its gin macro.
  """
  if not isinstance(cfg.model_dir, (str, os.PathLike)):
    raise SettingError(f"MODEL_DIR must be a folder path (a string), got {cfg.model_dir!r}.")
  if "://" in str(cfg.model_dir) and not str(cfg.model_dir).startswith("gs://"):
    # Path("s3://b/run") is the local folder "s3:/b/run": without this check a run would write there silently.
    raise SettingError(
      f"MODEL_DIR {cfg.model_dir} is a URL this project does not write to: set MODEL_DIR to a local (or mounted) "
      "folder, or to Google Cloud Storage (gs://bucket/run)."
    )
  if not isinstance(cfg.mixture_or_task_name, str):
    raise SettingError(f"MIXTURE_OR_TASK_NAME must be a task name (a string), got {cfg.mixture_or_task_name!r}.")
  _check_feature_lengths(cfg.task_feature_lengths)
  prompt_length = cfg.prompt.length if cfg.prompt is not None else 0  # an integer >= 0: the Prompt checked it
  require_int(cfg.batch_size, "BATCH_SIZE", minimum=1)
  require_int(cfg.num_microbatches, "NUM_MICROBATCHES", minimum=1)
  if cfg.batch_size % cfg.num_microbatches:
    raise SettingError(
      f"BATCH_SIZE {cfg.batch_size} must be a multiple of NUM_MICROBATCHES {cfg.num_microbatches}: change either."
    )
  require_int(cfg.max_encoder_length, "MAX_ENCODER_LENGTH", minimum=1, optional=True)
  _check_encoder_length(prompt_length, cfg.task_feature_lengths, cfg.max_encoder_length)
  _require_rate(cfg.dropout_rate, "DROPOUT_RATE")
  check_precision(cfg.activation_dtype, cfg.frozen_dtype, cfg.remat_policy)
  if not _is_number(cfg.z_loss) or cfg.z_loss < 0:
    raise SettingError(f"Z_LOSS must be a number >= 0, got {cfg.z_loss!r} (T5X uses 1e-4).")
  require_int(cfg.keep_checkpoints, "RunConfig.keep_checkpoints", minimum=1, optional=True)
  require_int(cfg.seed, "SEED")
  require_int(cfg.num_partitions, "NUM_PARTITIONS", minimum=1)
  if not isinstance(cfg.pack, bool):
    raise SettingError(f"PACK must be True or False, got {cfg.pack!r}.")
  if not isinstance(cfg.bucket_by_length, bool):
    raise SettingError(f"BUCKET_BY_LENGTH must be True or False, got {cfg.bucket_by_length!r}.")
  require_int(cfg.buckets_per_doubling, "BUCKETS_PER_DOUBLING", minimum=1)
  if cfg.buckets_per_doubling > 4:
    raise SettingError(
      f"BUCKETS_PER_DOUBLING = {cfg.buckets_per_doubling} compiles a step for each of that many lengths per "
      "doubling: use 1 (powers of two), 2, 3 or 4."
    )
  if cfg.buckets_per_doubling != 1 and not cfg.bucket_by_length:
    raise SettingError(
      f"BUCKETS_PER_DOUBLING = {cfg.buckets_per_doubling} is read only with BUCKET_BY_LENGTH = True: set "
      "BUCKET_BY_LENGTH = True, or leave BUCKETS_PER_DOUBLING at 1."
    )
  if cfg.bucket_by_length and cfg.pack:
    raise SettingError(
      "BUCKET_BY_LENGTH = True pads unpacked rows to their length bucket, and PACK = True fills every row to the "
      "full length: set one of them to False (PACK gains more where many examples fit a row)."
    )
  if cfg.mesh_shape is not None and (
    len(tuple(cfg.mesh_shape)) != 2 or not all(_is_int(n) and n >= 1 for n in cfg.mesh_shape)
  ):
    raise SettingError(f"RunConfig.mesh_shape must be (data, model) positive integers, got {cfg.mesh_shape!r}.")
  if cfg.trainable_pattern is None:  # the tuning methods' subtrees (run.pattern_of)
    return
  if not isinstance(cfg.trainable_pattern, str):
    raise SettingError(
      f"TRAINABLE_PATTERN must be a regular expression string (or None: the tuning methods' vectors), got "
      f"{cfg.trainable_pattern!r}."
    )
  try:
    re.compile(cfg.trainable_pattern)
  except re.error as e:
    raise SettingError(f"TRAINABLE_PATTERN {cfg.trainable_pattern!r} is not a valid regular expression: {e}.") from e


def check_length_buckets(bucket_by_length: bool, process_count: int) -> None:
  """Refuses BUCKET_BY_LENGTH in a run of several processes: each would pick its own bucket for its rows of a step,
  and a step's global batch has one shape."""
  if bucket_by_length and process_count > 1:
    raise SettingError(
      f"BUCKET_BY_LENGTH = True buckets each process's rows on their own, and this run has {process_count} "
      "processes, whose rows of one step must share a shape: set BUCKET_BY_LENGTH = False (or PACK = True)."
    )


def check_packing(pack: bool, takes_packed_rows: bool) -> None:
  """Refuses PACK = True for a backbone that takes no packed rows (`T5Config.takes_packed_rows`: a decoder-only one;
  packing is for encoder-decoder examples)."""
  if pack and not takes_packed_rows:
    raise SettingError(
      "PACK = True packs encoder-decoder examples; this backbone is decoder-only (a prefix LM), which trains on "
      "unpacked rows: set PACK = False."
    )


def check_schedule(
  num_train_steps: Any,
  checkpoint_every: Any,
  eval_every: Any,
  log_every: Any,
  stop_after: Any = None,
  eval_max_batches: Any = None,
) -> None:
  """Checks train's schedule: whole, positive step counts and periods.

  Raises:
    SettingError: naming TRAIN_STEPS, CHECKPOINT_EVERY, EVAL_EVERY or the train.* binding to fix.
  """
  require_int(num_train_steps, "TRAIN_STEPS (train.num_train_steps)", minimum=1)
  require_int(checkpoint_every, "CHECKPOINT_EVERY (train.checkpoint_every)", minimum=1)
  require_int(eval_every, "EVAL_EVERY (train.eval_every; 0: never)", minimum=0)
  require_int(log_every, "train.log_every", minimum=1)
  require_int(stop_after, "train.stop_after", minimum=1, optional=True)
  require_int(eval_max_batches, "train.eval_max_batches", minimum=1, optional=True)


def newest_checkpoint_step(model_dir: str | os.PathLike) -> int | None:
  """The highest finished step folder in MODEL_DIR/checkpoints (orbax's temporary folders, and files named like a
  step, are not counted)."""
  from prompt_tuning import storage

  folder = storage.path(model_dir) / "checkpoints"
  entries = folder.iterdir() if folder.is_dir() else []
  steps = [int(p.name) for p in entries if p.name.isdigit() and storage.is_finished_step(p)]
  return max(steps) if steps else None


def check_resume(model_dir: str | os.PathLike, num_train_steps: int) -> None:
  """Refuses to train on in a MODEL_DIR whose checkpoints cannot be resumed as they are: TRAIN_STEPS below the step
  reached (the run would silently do nothing), a step folder that is a link (orbax cannot prune it), or every
  checkpoint moved aside as damaged (a new run would start at step 0 and overwrite numpy_checkpoints/)."""
  from prompt_tuning import storage

  folder = storage.path(model_dir) / "checkpoints"
  entries = sorted(folder.iterdir(), key=str) if folder.is_dir() else []
  links = [p for p in entries if isinstance(p, Path) and p.is_symlink() and p.name.isdigit()]
  if links:
    raise SettingError(
      f"{links[0]} is a symbolic link (to {os.readlink(links[0])}): training checkpoints must be folders inside "
      "MODEL_DIR, which the run writes and deletes (keep_checkpoints) itself. Replace the link by a copy of its "
      "folder, or remove it."
    )
  for stray in (p for p in entries if p.name.isdigit() and not p.is_dir()):
    log.warning("%s is a file, not a checkpoint folder: it is not a checkpoint, and is left alone.", stray)
  newest = newest_checkpoint_step(model_dir)
  if newest is not None and newest > num_train_steps:
    raise SettingError(
      f"{model_dir} holds a checkpoint at step {newest}, past TRAIN_STEPS {num_train_steps}: set TRAIN_STEPS above "
      f"{newest} to train on, or use a fresh MODEL_DIR."
    )
  damaged = storage.path(model_dir) / "damaged_checkpoints"
  if newest is None and damaged.is_dir() and any(damaged.iterdir()):
    raise SettingError(
      f"{model_dir} has no intact training checkpoint left: every one was found damaged and moved to {damaged}. "
      "Training here would start again at step 0 and overwrite numpy_checkpoints/. Use a fresh MODEL_DIR (start it "
      f"from a saved prompt with prompts.from_file), or delete {damaged} to train again from step 0 here."
    )


def check_writable(folder: str | os.PathLike) -> None:
  """Refuses a MODEL_DIR (or its checkpoints/ and numpy_checkpoints/) where this process cannot create a file.

  Tried, not inferred from permission bits: read-only mounts and ACLs count too. A gs:// folder is tried the same
  way, in its bucket (`storage.check_bucket`).
  """
  import tempfile

  from prompt_tuning import storage

  if storage.is_remote(folder):
    try:
      storage.check_bucket(folder)
    except storage.StorageError as e:
      raise SettingError(str(e)) from None
    return

  for path in (Path(folder), Path(folder) / "checkpoints", Path(folder) / "numpy_checkpoints"):
    if path.exists() and not path.is_dir():
      raise SettingError(
        f"{path} is a file, where the run keeps a folder of checkpoints: move it away, or set another MODEL_DIR."
      )
    if not path.is_dir():
      continue
    try:
      with tempfile.TemporaryFile(dir=path):
        pass
    except OSError as e:
      raise SettingError(
        f"{path} is not writable ({e.strerror}): fix its permissions or free its disk, or set another MODEL_DIR."
      ) from None


def check_task(name: str) -> Any:
  """The registered task or mixture `name`, after reading every SentencePiece model it uses.

  Raises:
    UnknownTaskError: no such task (close names suggested).
    SettingError: a vocabulary file that is not a readable SentencePiece model.
  """
  from prompt_tuning import inputs

  task = inputs.get_task(name)
  for vocabulary in _vocabularies(task):
    check_sentencepiece_file(vocabulary)
  return task


def _vocabularies(task: Any) -> list[Any]:
  tasks = getattr(task, "tasks", None) or [task]
  found = []
  for sub in tasks:
    for feature in sub.output_features.values():
      if all(feature.vocabulary is not seen for seen in found):
        found.append(feature.vocabulary)
  return found


def check_sentencepiece_file(vocabulary: Any) -> None:
  """Loads a seqio SentencePiece vocabulary's model file outside TensorFlow, so a bad file is named here."""
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  if not path:
    return
  import sentencepiece
  import tensorflow as tf

  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      proto = f.read()
  except Exception as e:  # noqa: BLE001 - gfile raises NotFoundError, PermissionDeniedError, ...
    raise SettingError(f"cannot read the SentencePiece model {path}: {e}. Point VOCABULARY_PATH at it.") from e
  try:
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
  except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError or protobuf's DecodeError
    raise SettingError(
      f"{path} is not a SentencePiece model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): it is "
      "truncated or another kind of file. Point VOCABULARY_PATH at the model's sentencepiece.model (T5: the "
      "32,000-piece cc_all.32000 model)."
    ) from e
  if processor.get_piece_size() < 3:
    raise SettingError(f"{path} is a SentencePiece model of {processor.get_piece_size()} pieces: too few to be T5's.")


def check_vocabulary(task: Any, embedding_rows: int) -> None:
  """Refuses a task whose token ids (with sentinels) reach past the backbone's embedding rows.

  Such ids index nothing: the loss turns NaN a few steps in, which looks like a learning-rate problem.
  """
  for vocabulary in _vocabularies(task):
    size = int(vocabulary.vocab_size)
    if size > embedding_rows:
      path = getattr(vocabulary, "sentencepiece_model_file", "the task's vocabulary")
      raise SettingError(
        f"the vocabulary {path} has {size:,} ids (with sentinels) but the backbone embeds only {embedding_rows:,} "
        "tokens: use the SentencePiece model the backbone was trained with (VOCABULARY_PATH), or the matching "
        "INITIAL_CHECKPOINT_PATH."
      )
    if embedding_rows - size > SPARE_EMBEDDING_ROWS:
      log.warning(
        "the vocabulary %s has %s ids but the backbone embeds %s tokens: a vocabulary this much smaller than the "
        "embedding is usually another model's SentencePiece file; check VOCABULARY_PATH.",
        getattr(vocabulary, "sentencepiece_model_file", "of the task"),
        f"{size:,}",
        f"{embedding_rows:,}",
      )


def check_split(task_name: str, split: Any, setting: str) -> None:
  """Refuses a split the task or mixture does not have (seqio would raise a bare KeyError naming only the split)."""
  import difflib

  from prompt_tuning import inputs

  try:
    splits = [str(name) for name in getattr(inputs.get_task(task_name), "splits", None) or []]
  except Exception:  # noqa: BLE001 - a TFDS task whose data is not prepared here: its own error comes later
    return
  if not splits or not isinstance(split, str) or split.split("[")[0] in splits:  # TFDS slices: 'train[:10%]'
    return
  close = difflib.get_close_matches(str(split), splits, n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise SettingError(f"{setting} is {split!r}, which task {task_name!r} does not have: its splits are {splits}.{hint}")


def check_num_examples(value: Any, setting: str) -> None:
  """Refuses a count of examples that reads nothing: None or -1 mean every example, else a positive integer."""
  if value is None or value == -1 and _is_int(value):
    return
  require_int(value, setting, minimum=-1)
  if value <= 0:
    raise SettingError(
      f"{setting} is {value}: that reads no example. Give a positive count, or -1 (or None) for every example."
    )


def check_has_checkpoint(cfg: Any, latest_step: int | None, command: str) -> None:
  """Refuses to evaluate (or infer with) freshly initialized trainable vectors as if they were trained.

  Allowed without a checkpoint: nothing trainable (PROMPT_LENGTH 0 and no other method: the frozen model itself), or
  a prompt read from a file (`prompts.from_file`) and no other method.
  """
  if latest_step is not None:
    return
  prompt = cfg.prompt if cfg.prompt is not None and cfg.prompt.used else None
  from_file = prompt is not None and getattr(prompt.initializer, "__qualname__", "").startswith("from_file")
  other_methods = cfg.prefix is not None or bool(getattr(cfg, "methods", ()))
  if (prompt is None or from_file) and not other_methods:
    return
  raise SettingError(
    f"{command}: {cfg.model_dir} holds no training checkpoint, so there is no trained prompt to {command}. Train "
    "first, point MODEL_DIR at a trained run, or give a saved prompt (prompts.from_file) or PROMPT_LENGTH = 0 for "
    "the frozen model."
  )


def hub_cache_repo(folder: Path) -> Path | None:
  """The Hugging Face cache repository (`.../models--org--name`) holding `folder` in one of its snapshots
  (`<repo>/snapshots/<revision>/...`), else None. Snapshot files are links into `<repo>/blobs/`, where the cache
  keeps each file once."""
  for snapshot in (folder, *folder.parents):
    repo = snapshot.parent.parent
    if snapshot.parent.name == "snapshots" and repo.name.startswith(("models--", "datasets--", "spaces--")):
      return repo
  return None


def resolve_inside(folder: str | os.PathLike, name: str, what: str) -> Path:
  """`folder / name`, refused when it resolves (through `..` or links) outside `folder`.

  A Hugging Face cache snapshot (`models--org--name/snapshots/<revision>/`) is the one exception: its files are
  links to `models--org--name/blobs/<sha256>` (huggingface_hub's layout), so there a link may resolve anywhere
  inside that repository's cache folder. A name that climbs out with `..` or is absolute is refused everywhere.

  Raises:
    CheckpointError: naming `what` (the file that named it) and the escaping name.
  """
  from prompt_tuning.checkpoints.errors import CheckpointError

  base = Path(folder).resolve()
  target = (base / name).resolve()
  lexical = os.path.normpath(name)
  climbs = os.path.isabs(name) or lexical == ".." or lexical.startswith(".." + os.sep)
  root = None if climbs else (hub_cache_repo(Path(os.path.abspath(folder))) or hub_cache_repo(base))
  allowed = [base] if root is None else [base, root.resolve()]
  if not any(target == place or place in target.parents for place in allowed):
    raise CheckpointError(
      f"{what} names {name!r}, which resolves to {target}, outside {base}: a checkpoint's files must be in its "
      "own folder. The file was altered or crafted; download the checkpoint again."
    )
  return target
