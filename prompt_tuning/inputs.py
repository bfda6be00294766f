"""seqio datasets -> model batches: feature conversion, per-process sharding, batching, resume position.

Packing (`pack=True`, gin PACK; encoder-decoder models): seqio's EncDecFeatureConverter(pack=True) puts several
examples in one row (`encoder_segment_ids`, `encoder_positions`, `decoder_segment_ids`, `decoder_positions`, as
T5X trains). A prompt joins every example (`prompt_tuning.combine.join_packed`), so each example first gets room
for it: `prompt_slots` (the prompt length P) `combine.PROMPT_SLOT` tokens after its inputs, trimmed to the inputs
length L as unpacked, and rows are packed to L + P encoder positions, the encoder length of an unpacked row with
its prompt. An example as long as L fills a row alone, as it would unpacked; shorter ones share rows. Decoding and
scoring (eval's seqio metrics, infer) always run unpacked.

Task ids (`task_count` > 0: a multi-task method is in use, `Method.task_count`): every batch gets "task_ids", each
example's task read from the sentinel its inputs open with, as the reference implementation's multi-task prompts
read it (`task_index_` tasks and mixtures, `prompt_tuning.data.registry`: "<extra_id_K> ..." is task K, the token
id vocab_size - 1 - K). Unpacked rows: int [B]; packed rows: int [B, S], segment k's task at [:, k - 1] (S =
`segment_capacity`; 0 past a row's last segment), so each packed example gets its own task's prompt
(`prompt_tuning.combine.join_packed`). An example whose first token names no task below `task_count` is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from prompt_tuning.models.configs import T5Config  # noqa: E402

# TensorFlow only feeds data here; keep it off accelerators and from
# competing with XLA for every core.
tf.config.set_visible_devices([], "GPU")

MODEL_FEATURES_ENC_DEC = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "decoder_target_tokens",
  "decoder_loss_weights",
)
PACKED_FEATURES = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids", "decoder_positions")
MODEL_FEATURES_PREFIX_LM = (
  "decoder_input_tokens",
  "decoder_target_tokens",
  "decoder_loss_weights",
  "decoder_causal_attention",
)


class PromptPackingConverter(seqio.EncDecFeatureConverter):
  """seqio's packing encoder-decoder converter, each example's inputs followed by room for its prompt.

  Every example's inputs are trimmed to the inputs length L, then get `prompt_slots` PROMPT_SLOT tokens, and rows
  are packed to L + prompt_slots encoder positions (see the module docstring).
  """

  def __init__(self, prompt_slots: int = 0, **kwargs):
    super().__init__(pack=True, **kwargs)
    self.prompt_slots = int(prompt_slots)

  def _with_slots(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    return {**task_feature_lengths, "inputs": task_feature_lengths["inputs"] + self.prompt_slots}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    from prompt_tuning.combine import PROMPT_SLOT

    length, slots = task_feature_lengths["inputs"], self.prompt_slots
    if slots:

      def reserve(example):
        inputs = example["inputs"][:length]
        return {**example, "inputs": tf.concat([inputs, tf.fill([slots], tf.cast(PROMPT_SLOT, inputs.dtype))], 0)}

      ds = ds.map(reserve, num_parallel_calls=tf.data.AUTOTUNE)
    return super()._convert_features(ds, self._with_slots(task_feature_lengths))

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    return super().get_model_feature_lengths(self._with_slots(task_feature_lengths))


def feature_converter(decoder_only: bool, pack: bool = False, prompt_slots: int = 0) -> seqio.FeatureConverter:
  """T5X's converters: encoder-decoder (packed with room for a `prompt_slots`-vector prompt per example when
  `pack`), or prefix LM for decoder-only models (never packed).

  Raises:
    ValueError: `pack` for a decoder-only model.
  """
  if decoder_only:
    if pack:
      raise ValueError(
        "PACK = True packs encoder-decoder examples; this backbone is decoder-only (a prefix LM), which trains on "
        "unpacked rows: set PACK = False."
      )
    return seqio.PrefixLMFeatureConverter(pack=False)
  if pack:
    return PromptPackingConverter(prompt_slots)
  return seqio.EncDecFeatureConverter(pack=False)


def _decoder_only(config: T5Config | None) -> bool:
  # The feature converters are where the two architectures' inputs truly differ: the one place here that asks.
  return config is not None and config.decoder_only


def model_converter(config: T5Config, pack: bool = False, prompt_slots: int = 0) -> seqio.FeatureConverter:
  """`feature_converter` for the backbone `config` describes."""
  return feature_converter(_decoder_only(config), pack, prompt_slots)


def _model_features(decoder_only: bool, pack: bool = False) -> tuple[str, ...]:
  if decoder_only:
    return MODEL_FEATURES_PREFIX_LM
  return MODEL_FEATURES_ENC_DEC + (PACKED_FEATURES if pack else ())


def segment_capacity(encoder_length: int, prompt_slots: int) -> int:
  """The most examples a packed row of `encoder_length` positions holds: each has at least one input token (its
  task's sentinel) and its `prompt_slots` prompt positions."""
  return max(encoder_length // (prompt_slots + 1), 1)


def task_ids(batch: Mapping[str, np.ndarray], vocab_size: int, task_count: int, prompt_slots: int = 0) -> np.ndarray:
  """Each row's (packed: each segment's) task: int [B] or [B, S] (module docstring); all-padding rows get 0.

  Raises:
    ValueError: an example whose first input token is not the sentinel of a task 0 .. task_count - 1, saying which
      tasks the run knows and what data to train on; a decoder-only batch (no encoder input).
  """
  if "encoder_input_tokens" not in batch:
    raise ValueError(
      "multi-task methods read each example's task from its encoder input; this backbone is decoder-only (a prefix "
      "LM): tune it with a single-task method."
    )
  tokens = np.asarray(batch["encoder_input_tokens"])
  segment_ids = batch.get("encoder_segment_ids")
  if segment_ids is None:
    rows, columns = np.nonzero(tokens[:, :1] != 0)
    ids = np.zeros(tokens.shape[0], np.int32)
    where = (rows,)
  else:
    segment_ids = np.asarray(segment_ids)
    starts = (segment_ids > 0) & (segment_ids != np.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1])
    rows, columns = np.nonzero(starts)
    segments = segment_ids[rows, columns] - 1
    ids = np.zeros((tokens.shape[0], segment_capacity(tokens.shape[1], prompt_slots)), np.int32)
    if segments.size and segments.max() >= ids.shape[1]:
      raise ValueError(
        f"a packed row holds {segments.max() + 1} examples, more than the {ids.shape[1]} its length allows with "
        "one input token each: an example has empty inputs, so no task sentinel."
      )
    where = (rows, segments)
  first = tokens[rows, columns]
  found = vocab_size - 1 - first.astype(np.int64)
  bad = (found < 0) | (found >= task_count)
  if bad.any():
    token = int(first[bad][0])
    named = f"<extra_id_{vocab_size - 1 - token}>" if 0 <= vocab_size - 1 - token < 1000 else f"token id {token}"
    raise ValueError(
      f"an example opens with {named}, which names no task of this run: its multi-task method knows tasks 0 .. "
      f"{task_count - 1} (<extra_id_0> .. <extra_id_{task_count - 1}>). Train it on task_index_ tasks or mixtures "
      "(e.g. task_index_glue_v200_proportional_examples), whose inputs open with their task's sentinel, and set "
      "its num_tasks above every task index they use."
    )
  ids[where] = found
  return ids


def _with_task_ids(batches, vocab_size: int, task_count: int, prompt_slots: int):
  for batch in batches:
    yield {**batch, "task_ids": task_ids(batch, vocab_size, task_count, prompt_slots)}


def vocab_size_of(task_name: str) -> int:
  """The size of the task's (or mixture's) input vocabulary, extra ids included (the sentinels' top)."""
  return int(get_task(task_name).output_features["inputs"].vocabulary.vocab_size)


def get_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture; an unknown name raises with close names suggested."""
  from prompt_tuning import data  # registers the project's tasks on first use

  return data.get_task_or_mixture(name)


def _converted(
  task_name, feature_lengths, decoder_only: bool, split: str, pack: bool = False, prompt_slots: int = 0, **options
):
  """This process's shard of a split, converted to the model's features (and only those), packed when `pack`;
  from seqio's offline cache under USE_CACHED_TASKS."""
  from prompt_tuning.data import sources

  task = get_task(task_name)
  use_cached = sources.use_cached_tasks()
  if use_cached:
    sources.check_cached(task)
  ds = seqio.get_dataset(
    task,
    dict(feature_lengths),
    feature_converter(decoder_only, pack, prompt_slots),
    dataset_split=split,
    shard_info=seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count()),
    verbose=False,
    use_cached=use_cached,
    **options,
  )
  keys = _model_features(decoder_only, pack)
  return ds.map(lambda ex: {k: ex[k] for k in keys})


def train_batches(
  task_name: str,
  feature_lengths: Mapping[str, int],
  local_batch_size: int,
  *,
  config: T5Config | None = None,
  seed: int = 0,
  start_batch: int = 0,
  shuffle: bool = True,
  split: str = "train",
  pack: bool = False,
  prompt_slots: int = 0,
  bucket_by_length: bool = False,
  buckets_per_doubling: int = 1,
  task_count: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of this process's shard of the training data; packed rows when `pack` (each example with
  `prompt_slots` positions for its prompt; see the module docstring); with `bucket_by_length` (unpacked), batches of
  examples of similar length, each padded to its bucket (`length_bucketed`: powers of two, or `buckets_per_doubling`
  lengths per doubling); with `task_count`, each
  batch's "task_ids" (module docstring).

  `config`: the backbone's, whose architecture picks the feature converter (`model_converter`); None: an
  encoder-decoder model's.

  The order is a pure function of `seed` and the number of processes, so a
  resumed run that skips `start_batch` batches sees exactly what an
  uninterrupted run would have seen next.
  """
  decoder_only = _decoder_only(config)
  ds = _converted(
    task_name, feature_lengths, decoder_only, split, pack, prompt_slots, shuffle=shuffle, num_epochs=None, seed=seed
  )
  if bucket_by_length:
    ds = length_bucketed(ds, local_batch_size, per_doubling=buckets_per_doubling)
  else:
    ds = ds.batch(local_batch_size, drop_remainder=True)
  if start_batch:
    ds = ds.skip(start_batch)
  batches = ds.prefetch(2).as_numpy_iterator()
  if task_count:
    return _with_task_ids(batches, vocab_size_of(task_name), task_count, prompt_slots if pack else 0)
  return batches


def eval_batches(
  task_name: str,
  feature_lengths: Mapping[str, int],
  local_batch_size: int,
  *,
  config: T5Config | None = None,
  split: str = "validation",
  max_batches: int | None = None,
  pack: bool = False,
  prompt_slots: int = 0,
  task_count: int = 0,
) -> list[dict[str, np.ndarray]]:
  """One pass over an evaluation split, the last batch padded with empty rows (zero loss weight); packed rows when
  `pack` (as `train_batches`, `config` too), with "task_ids" when `task_count` (as `train_batches`)."""
  decoder_only = _decoder_only(config)
  ds = _converted(task_name, feature_lengths, decoder_only, split, pack, prompt_slots, shuffle=False, num_epochs=1)
  batches = []
  for batch in ds.batch(local_batch_size).as_numpy_iterator():
    batches.append(pad_rows(batch, local_batch_size))
    if max_batches is not None and len(batches) >= max_batches:
      break
  if task_count:
    batches = list(_with_task_ids(batches, vocab_size_of(task_name), task_count, prompt_slots if pack else 0))
  return batches


def pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads every feature with all-zero rows up to `rows` (zeros are padding and weigh nothing)."""
  have = next(iter(batch.values())).shape[0]
  if have == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - have,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


SMALLEST_BUCKET = 8


def bucket_length(used: int, full: int, smallest: int = SMALLEST_BUCKET) -> int:
  """The compiled length for `used` real positions: the smallest power of two >= used (at least `smallest`),
  capped at the feature length `full`. So one feature compiles at most log2(full / smallest) + 2 shapes."""
  length = smallest
  while length < used:
    length *= 2
  return min(length, full)


def bucket_lengths(full: int, smallest: int = SMALLEST_BUCKET, per_doubling: int = 1) -> list[int]:
  """The bucket lengths of a feature of length `full`: the powers of two from `smallest` below `full`, and `full`
  (the lengths `bucket_length` returns). With `per_doubling` n > 1, n lengths per doubling instead, `smallest` *
  2^(k/n) rounded up to a multiple of 8 (2: 8, 16, 24, 32, 48, 64, 96, 128, 184, 256, 368, 512, ...): the rows pad
  less (a padded row is at most 2^(1/n) times its length, and 8 positions) for n times the compiled shapes."""
  lengths, k = [smallest], 0
  while lengths[-1] < full:
    k += 1
    exact = smallest * 2 ** (k / per_doubling)
    lengths.append(int(exact) if per_doubling == 1 else 8 * math.ceil(exact / 8))
  return sorted({n for n in lengths if n < full}) + [full]


def _bucketed_side(features) -> str:
  """The features a bucket pads to its length: the encoder's (encoder-decoder), else the decoder's (prefix LM)."""
  return "encoder" if "encoder_input_tokens" in features else "decoder"


def length_bucketed(
  ds: tf.data.Dataset, batch_size: int, smallest: int | None = None, per_doubling: int = 1
) -> tf.data.Dataset:
  """Batches of `batch_size` rows of examples of similar length, from unpacked seqio-converted rows (`ds`, every
  feature padded to its full length): tf.data's `bucket_by_sequence_length` groups the examples by the bucket of
  their real length (`bucket_lengths` of the full length: powers of two, or `per_doubling` lengths per doubling
  (BUCKETS_PER_DOUBLING)), in the order they come, and pads each
  batch's bucketed features (the encoder's; a prefix LM's decoder) to its bucket; the other side keeps its full
  length. So a step compiles once per bucket, and the order is a pure function of the input order (resuming by
  skipping batches stays exact). Zeros past a row's end are padding, masked and weighing nothing, so an example
  gets the loss and gradients it gets at the full length.
  """
  side = _bucketed_side(ds.element_spec)
  full = {name: spec.shape[0] for name, spec in ds.element_spec.items()}
  length = max(n for name, n in full.items() if name.startswith(side))
  key = f"{side}_input_tokens" if side == "encoder" else "decoder_target_tokens"

  def trim(example):
    positions = tf.range(1, length + 1)
    used = tf.reduce_max(tf.where(example[key] != 0, positions, 0))
    return {name: v[:used] if name.startswith(side) else v for name, v in example.items()}

  buckets = bucket_lengths(length, SMALLEST_BUCKET if smallest is None else smallest, per_doubling)
  # A bucket holds lengths below its boundary and pads to the boundary - 1 (pad_to_bucket_boundary); every length
  # is at most the full one, so the open-ended bucket past the last boundary stays empty.
  return ds.map(trim).bucket_by_sequence_length(
    lambda example: tf.shape(example[key])[0],
    bucket_boundaries=[n + 1 for n in buckets],
    bucket_batch_sizes=[batch_size] * (len(buckets) + 1),
    padded_shapes={name: [None] if name.startswith(side) else [full[name]] for name in full},
    pad_to_bucket_boundary=True,
    drop_remainder=True,
  )


def used_length(values: np.ndarray) -> int:
  """Positions up to and including the last non-zero one in any row of an int/float [rows, length] array."""
  columns = np.flatnonzero(np.any(values != 0, axis=0))
  return int(columns[-1]) + 1 if columns.size else 0


def trim_to_buckets(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Cuts the trailing padding of a batch down to its bucket length, per side: the encoder_* features share one
  length and the decoder_* features another (zeros past a row's end are padding, masked and weighing nothing, so
  every result is the same as with the full length)."""
  lengths = {}
  for name, values in batch.items():
    side = name.split("_", 1)[0]
    if side in ("encoder", "decoder"):  # not "task_ids": one per row (segment), never trimmed
      lengths[side] = max(lengths.get(side, 0), used_length(values))
  return {
    name: values[:, : bucket_length(lengths[side], values.shape[1])]
    if (side := name.split("_", 1)[0]) in lengths
    else values
    for name, values in batch.items()
  }


def by_length_batches(
  examples: list[tuple[int, dict[str, np.ndarray]]], batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], int]]:
  """(indices, features, real rows) of `examples` ((index, features of one example)) in batches of similar
  length: sorted by their real (non-padding) token count, padded with empty rows to `batch_size` and trimmed to a
  bucket length (`trim_to_buckets`)."""
  order = sorted(examples, key=lambda item: sum(used_length(v[None]) for v in item[1].values()))
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    indices = np.array([index for index, _ in chunk])
    features = {name: np.stack([f[name] for _, f in chunk]) for name in chunk[0][1]}
    yield indices, trim_to_buckets(pad_rows(features, batch_size)), len(chunk)
