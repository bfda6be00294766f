"""seqio datasets -> model batches: feature conversion, per-process sharding, batching, resume position."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

# TensorFlow only feeds data here; keep it off accelerators and from
# competing with XLA for every core.
tf.config.set_visible_devices([], "GPU")

MODEL_FEATURES_ENC_DEC = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "decoder_target_tokens",
  "decoder_loss_weights",
)
MODEL_FEATURES_PREFIX_LM = (
  "decoder_input_tokens",
  "decoder_target_tokens",
  "decoder_loss_weights",
  "decoder_causal_attention",
)


def feature_converter(decoder_only: bool) -> seqio.FeatureConverter:
  """T5X's converters, unpacked: encoder-decoder, or prefix LM for decoder-only models."""
  if decoder_only:
    return seqio.PrefixLMFeatureConverter(pack=False)
  return seqio.EncDecFeatureConverter(pack=False)


def _model_features(decoder_only: bool) -> tuple[str, ...]:
  return MODEL_FEATURES_PREFIX_LM if decoder_only else MODEL_FEATURES_ENC_DEC


def get_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture; an unknown name raises with close names suggested."""
  from prompt_tuning import data  # registers the project's tasks on first use

  return data.get_task_or_mixture(name)


def _converted(task_name, feature_lengths, decoder_only: bool, split: str, **options):
  """This process's shard of a split, converted to the model's features (and only those); from seqio's offline
  cache under USE_CACHED_TASKS."""
  from prompt_tuning.data import sources

  task = get_task(task_name)
  use_cached = sources.use_cached_tasks()
  if use_cached:
    sources.check_cached(task)
  ds = seqio.get_dataset(
    task,
    dict(feature_lengths),
    feature_converter(decoder_only),
    dataset_split=split,
    shard_info=seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count()),
    verbose=False,
    use_cached=use_cached,
    **options,
  )
  keys = _model_features(decoder_only)
  return ds.map(lambda ex: {k: ex[k] for k in keys})


def train_batches(
  task_name: str,
  feature_lengths: Mapping[str, int],
  local_batch_size: int,
  *,
  decoder_only: bool = False,
  seed: int = 0,
  start_batch: int = 0,
  shuffle: bool = True,
  split: str = "train",
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of this process's shard of the training data.

  The order is a pure function of `seed` and the number of processes, so a
  resumed run that skips `start_batch` batches sees exactly what an
  uninterrupted run would have seen next.
  """
  ds = _converted(task_name, feature_lengths, decoder_only, split, shuffle=shuffle, num_epochs=None, seed=seed)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if start_batch:
    ds = ds.skip(start_batch)
  return ds.prefetch(2).as_numpy_iterator()


def eval_batches(
  task_name: str,
  feature_lengths: Mapping[str, int],
  local_batch_size: int,
  *,
  decoder_only: bool = False,
  split: str = "validation",
  max_batches: int | None = None,
) -> list[dict[str, np.ndarray]]:
  """One pass over an evaluation split, the last batch padded with empty rows (zero loss weight)."""
  ds = _converted(task_name, feature_lengths, decoder_only, split, shuffle=False, num_epochs=1)
  batches = []
  for batch in ds.batch(local_batch_size).as_numpy_iterator():
    batches.append(pad_rows(batch, local_batch_size))
    if max_batches is not None and len(batches) >= max_batches:
      break
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
    lengths[side] = max(lengths.get(side, 0), used_length(values))
  return {
    name: values[:, : bucket_length(lengths[name.split("_", 1)[0]], values.shape[1])] for name, values in batch.items()
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
