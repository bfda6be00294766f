"""T5's span-corruption pretraining objective as seqio preprocessors (Raffel et al. 2020, section 3.1.4).

A chunk of text is split into alternating spans of kept and "noise" tokens. The noise spans, about
`noise_density` of the tokens in spans of `mean_noise_span_length` on average, are cut out of the input and each
replaced by one sentinel; the target lists the cut spans, each after its sentinel:

    text     Thank you for inviting me to your party last week .
    inputs   Thank you <extra_id_0> me to your party <extra_id_1>
    targets  <extra_id_0> for inviting <extra_id_1> last week .

As in T5, a chunk starts with kept tokens and ends with a noise span.

Sentinels come from the end of the vocabulary (`<extra_id_0>` is id `vocab_size - 1`, the next is one below), as in
T5's SentencePiece vocabularies with 100 extra ids. Every random choice uses stateless TensorFlow ops with seeds that
seqio hands each example (`seqio.map_over_dataset(num_seeds=...)`), so a dataset built with the same seed gives the
same examples.

In a task, after tokenization (the text in the "targets" feature):

    preprocessors=[
      seqio.preprocessors.rekey, seqio.preprocessors.tokenize,
      functools.partial(span_corruption.concatenate_and_split, key="targets"),  # raw chunks for the lengths
      span_corruption.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
    ]
"""

from __future__ import annotations

import math

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) of a chunk of `length` tokens (python ints; at least one of each, one kept token)."""
  num_noise = min(max(round(length * noise_density), 1), length - 1)
  num_spans = max(round(num_noise / mean_noise_span_length), 1)
  return num_noise, num_spans


def chunk_lengths(
  inputs_length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
  """The longest raw chunk whose corrupted input, with EOS, fits `inputs_length`; and its target's length with EOS.

  Returns:
    (chunk length, targets length): use the second as TASK_FEATURE_LENGTHS["targets"] so nothing is cut.

  Raises:
    ValueError: `inputs_length` too short to hold even one corrupted span.
  """
  if inputs_length < 3:
    raise ValueError(f"inputs length {inputs_length} is too short for span corruption; use at least 3 tokens")
  best = None
  for length in range(2, 4 * inputs_length):
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    if length - num_noise + num_spans + 1 <= inputs_length:
      best = (length, num_noise + num_spans + 1)
  if best is None:
    raise ValueError(f"inputs length {inputs_length} is too short for span corruption; use at least 3 tokens")
  return best


def _segment_lengths(num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Splits `num_items` into `num_segments` random positive lengths (int32 [num_segments]) that sum to it."""
  # Choose num_segments - 1 distinct cut points among the num_items - 1 gaps between items.
  gaps = tf.random.stateless_uniform([num_items - 1], seed=seed)
  order = tf.argsort(tf.argsort(gaps))  # A random permutation of 0 .. num_items - 2.
  is_cut = tf.cast(order < num_segments - 1, tf.int32)
  segment_ids = tf.concat([[0], tf.cumsum(is_cut)], axis=0)  # [num_items], 0 .. num_segments - 1
  return tf.math.unsorted_segment_sum(tf.ones_like(segment_ids), segment_ids, num_segments)


def random_spans_noise_mask(
  length: tf.Tensor,
  seeds: tf.Tensor,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
  """A bool mask [length] of the noise tokens: alternating kept and noise spans, starting with kept tokens.

  Args:
    length: the number of tokens (scalar int tensor, at least 2).
    seeds: int32 [2, 2], two stateless seeds (kept span lengths, noise span lengths).
    noise_density: fraction of noise tokens (rounded; at least one, and one token is always kept).
    mean_noise_span_length: average noise span length.
  """
  length = tf.cast(length, tf.int32)
  lengthf = tf.cast(length, tf.float32)
  num_noise = tf.clip_by_value(tf.cast(tf.round(lengthf * noise_density), tf.int32), 1, length - 1)
  num_spans = tf.maximum(tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32), 1)
  noise_lengths = _segment_lengths(num_noise, num_spans, seeds[0])
  kept_lengths = _segment_lengths(length - num_noise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1), [-1])  # [2 * num_spans]
  span_starts = tf.cumsum(interleaved)[:-1]
  is_start = tf.scatter_nd(span_starts[:, None], tf.ones_like(span_starts), [length])
  span_index = tf.cumsum(is_start)  # [length]: 0, 0, 1, 1, 1, 2, ... (kept spans even, noise spans odd)
  return tf.equal(span_index % 2, 1)


def _sentinels_for_spans(tokens: tf.Tensor, drop_mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
  """Replaces each run of `drop_mask` tokens by one sentinel (vocab_size - 1, vocab_size - 2, ...)."""
  previous = tf.pad(drop_mask[:-1], [[1, 0]])
  first_in_span = tf.logical_and(drop_mask, tf.logical_not(previous))
  span_number = tf.cumsum(tf.cast(first_in_span, tokens.dtype))  # 1 for the first dropped span, ...
  sentinels = tf.cast(vocab_size, tokens.dtype) - span_number
  replaced = tf.where(first_in_span, sentinels, tokens)
  keep = tf.logical_or(tf.logical_not(drop_mask), first_in_span)
  return tf.boolean_mask(replaced, keep)


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
  """The corrupted input: each noise span replaced by its sentinel."""
  return _sentinels_for_spans(tokens, noise_mask, vocab_size)


def nonnoise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
  """The target: each kept span replaced by a sentinel, so the noise spans follow the input's sentinels in turn."""
  return _sentinels_for_spans(tokens, tf.logical_not(noise_mask), vocab_size)


def concatenate_and_split(
  dataset: tf.data.Dataset,
  sequence_length: dict[str, int],
  key: str = "targets",
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.data.Dataset:
  """Concatenates the token stream of `key` and cuts it into chunks sized for `sequence_length["inputs"]`.

  Each example becomes {"targets": chunk} (other features are dropped). The last, shorter chunk is kept if it holds
  at least two tokens.
  """
  chunk, _ = chunk_lengths(sequence_length["inputs"], noise_density, mean_noise_span_length)
  return split_token_stream(dataset, chunk, key)


def split_token_stream(dataset: tf.data.Dataset, chunk: int, key: str = "targets") -> tf.data.Dataset:
  """The token stream of `key`, concatenated and cut into `chunk`-token examples {"targets": chunk}.

  Other features are dropped; the last, shorter chunk is kept if it holds at least two tokens.
  """
  tokens = dataset.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(ex[key]))
  chunks = tokens.batch(chunk).filter(lambda x: tf.size(x) >= 2)
  return chunks.map(lambda x: {"targets": x}, num_parallel_calls=tf.data.AUTOTUNE)


def _vocab_size(output_features: dict[str, seqio.Feature]) -> int:
  size = output_features["targets"].vocabulary.vocab_size
  if output_features["inputs"].vocabulary.vocab_size != size:
    raise ValueError("span corruption needs the same vocabulary for inputs and targets (the sentinels are shared)")
  return size


def span_corruption(
  dataset: tf.data.Dataset,
  output_features: dict[str, seqio.Feature],
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.data.Dataset:
  """Turns {"targets": tokens} into {"inputs": corrupted tokens, "targets": the noise spans} (see module docstring).

  Chunks shorter than two tokens cannot be corrupted and are dropped.
  """
  vocab_size = _vocab_size(output_features)

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(example, seeds):
    tokens = example["targets"]
    mask = random_spans_noise_mask(tf.size(tokens), seeds, noise_density, mean_noise_span_length)
    return {
      "inputs": noise_span_to_unique_sentinel(tokens, mask, vocab_size),
      "targets": nonnoise_span_to_unique_sentinel(tokens, mask, vocab_size),
    }

  return corrupt(dataset.filter(lambda ex: tf.size(ex["targets"]) >= 2))


def expected_noise_fraction(length: int, noise_density: float = NOISE_DENSITY) -> float:
  """The fraction of a `length`-token chunk that is noise (rounding as the mask does)."""
  return min(max(round(length * noise_density), 1), length - 1) / length if length > 1 else math.nan
