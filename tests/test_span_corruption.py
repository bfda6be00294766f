"""T5's span corruption (prompt_tuning/data/span_corruption.py): shapes, noise, reconstruction, determinism."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import span_corruption as sc

VOCAB_SIZE = 1000  # Sentinels are 999, 998, ...; text tokens stay below 900.


def _features():
  feature = seqio.Feature(vocabulary=seqio.PassThroughVocabulary(VOCAB_SIZE), add_eos=True)
  return {"inputs": feature, "targets": feature}


def _mask(length, seed=(1, 2)):
  seeds = tf.constant([seed, (seed[0] + 7, seed[1] + 11)], tf.int32)
  return sc.random_spans_noise_mask(tf.constant(length), seeds).numpy()


def _spans(mask):
  """(start, length) of every run of True."""
  spans, start = [], None
  for i, value in enumerate(list(mask) + [False]):
    if value and start is None:
      start = i
    if not value and start is not None:
      spans.append((start, i - start))
      start = None
  return spans


def _reconstruct(inputs, targets):
  """Puts each target span back in place of its sentinel."""
  pieces, current = {}, None
  for token in targets:
    if token >= VOCAB_SIZE - 100:
      current = token
      pieces[current] = []
    else:
      pieces[current].append(token)
  out = []
  for token in inputs:
    out.extend(pieces.get(token, []) if token >= VOCAB_SIZE - 100 else [token])
  return out


@pytest.mark.parametrize("length", [2, 5, 30, 141, 568])
def test_noise_mask_density_and_spans(length):
  mask = _mask(length)
  assert mask.shape == (length,) and mask.dtype == bool
  num_noise, num_spans = sc.noise_counts(length, sc.NOISE_DENSITY, sc.MEAN_NOISE_SPAN_LENGTH)
  assert mask.sum() == num_noise
  assert len(_spans(mask)) == num_spans
  assert not mask[0]  # T5's masks start with kept tokens and end with noise.
  assert mask[-1]


def test_noise_density_and_mean_span_length_on_average():
  masks = [_mask(568, (s, 3 * s + 1)) for s in range(20)]
  density = np.mean([m.mean() for m in masks])
  lengths = [n for m in masks for _, n in _spans(m)]
  assert abs(density - 0.15) < 0.005
  assert 2.7 < np.mean(lengths) < 3.3


def test_inputs_and_targets_reconstruct_the_text():
  tokens = tf.range(10, 151)
  mask = tf.constant(_mask(141))
  inputs = sc.noise_span_to_unique_sentinel(tokens, mask, VOCAB_SIZE).numpy()
  targets = sc.nonnoise_span_to_unique_sentinel(tokens, mask, VOCAB_SIZE).numpy()
  sentinels = [t for t in inputs if t >= VOCAB_SIZE - 100]
  assert sentinels == list(range(VOCAB_SIZE - 1, VOCAB_SIZE - 1 - len(sentinels), -1))  # unique, from the end
  assert [t for t in targets if t >= VOCAB_SIZE - 100] == sentinels
  assert _reconstruct(inputs, targets) == list(range(10, 151))


def test_chunk_lengths_match_t5():
  assert sc.chunk_lengths(512) == (568, 114)  # T5's published numbers for inputs of 512.
  for inputs_length in (16, 128, 512):
    chunk, targets = sc.chunk_lengths(inputs_length)
    num_noise, num_spans = sc.noise_counts(chunk, sc.NOISE_DENSITY, sc.MEAN_NOISE_SPAN_LENGTH)
    assert chunk - num_noise + num_spans + 1 <= inputs_length
    assert targets == num_noise + num_spans + 1
  with pytest.raises(ValueError, match="too short"):
    sc.chunk_lengths(2)


def _pipeline(seed, lines):
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(lines, dtype=tf.int32)})
  ds = ds.map(lambda ex: {"targets": ex["targets"]})
  with seqio.utils.map_seed_manager(seed):
    ds = sc.concatenate_and_split(ds, {"inputs": 48, "targets": 12})
    ds = sc.span_corruption(ds, _features())
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_preprocessors_fit_the_lengths_reconstruct_and_are_deterministic():
  lines = [list(range(100 + 40 * i, 100 + 40 * i + n)) for i, n in enumerate([27, 3, 32, 39, 20, 35])]
  examples = _pipeline(42, lines)
  chunk, targets_length = sc.chunk_lengths(48)
  stream = [t for line in lines for t in line]
  rebuilt = []
  for ex in examples:
    assert len(ex["inputs"]) + 1 <= 48 and len(ex["targets"]) + 1 <= targets_length
    rebuilt.extend(_reconstruct(ex["inputs"], ex["targets"]))
  assert rebuilt == stream
  assert len(examples) == -(-len(stream) // chunk)
  assert _pipeline(42, lines) == examples
  assert _pipeline(43, lines) != examples


def test_mismatched_vocabularies_are_refused():
  features = _features() | {"inputs": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(10))}
  with pytest.raises(ValueError, match="same vocabulary"):
    sc.span_corruption(tf.data.Dataset.from_tensors({"targets": tf.range(10)}), features)
