"""T5's prefix language-modeling objective as seqio preprocessors: the "LM adaptation" of Lester et al. 2021.

Section 3.2 of the paper: a model pretrained only on span corruption has never written natural text, only spans
between sentinels, and prompt tuning such a model works poorly, worst for small models; continuing its training for
a while on a language-modeling objective ("given a natural text prefix as input, the model must produce the natural
text continuation as output") fixes most of it. A chunk of text is cut at a random point; the model reads the first
part and writes the rest:

    text     Thank you for inviting me to your party last week .
    inputs   Thank you for inviting me
    targets  to your party last week .

Chunks hold `max(inputs, targets) - 1` tokens (room for the EOS), and the cut is uniform over the points that leave
each side within its length: with equal lengths, as in the demo's recipe, anywhere. As in `span_corruption`, the
random choices use stateless TensorFlow ops seeded by seqio per example, so the same seed gives the same examples.

In a task, after tokenization (the text in the "targets" feature):

    preprocessors=[
      seqio.preprocessors.tokenize,
      prefix_lm.concatenate_and_split,
      prefix_lm.split_inputs_and_targets,
      seqio.preprocessors.append_eos_after_trim,
    ]
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from prompt_tuning.data import span_corruption


def chunk_length(sequence_length: dict[str, int]) -> int:
  """Tokens of text per example: the longer side's length less its EOS (a longer chunk would pin the cut)."""
  inputs, targets = sequence_length["inputs"], sequence_length["targets"]
  if inputs < 2 or targets < 2:
    raise ValueError(
      f"prefix LM needs at least 2 input and 2 target positions (one token + EOS); got {sequence_length}"
    )
  return max(inputs, targets) - 1


def concatenate_and_split(
  dataset: tf.data.Dataset, sequence_length: dict[str, int], key: str = "targets"
) -> tf.data.Dataset:
  """Concatenates the token stream of `key` and cuts it into `chunk_length` chunks, each {"targets": chunk}.

  Other features are dropped; the last, shorter chunk is kept if it holds at least two tokens.
  """
  return span_corruption.split_token_stream(dataset, chunk_length(sequence_length), key)


def split_inputs_and_targets(dataset: tf.data.Dataset, sequence_length: dict[str, int]) -> tf.data.Dataset:
  """Turns {"targets": chunk} into {"inputs": the chunk's start, "targets": the rest}, cut at a random point.

  The cut leaves at least one token on each side, at most `inputs - 1` in the inputs and `targets - 1` in the
  targets; chunks shorter than two tokens are dropped.
  """
  max_inputs, max_targets = sequence_length["inputs"] - 1, sequence_length["targets"] - 1

  @seqio.map_over_dataset(num_seeds=1)
  def split(example, seed):
    tokens = example["targets"]
    n = tf.size(tokens)
    low = tf.maximum(1, n - max_targets)
    high = tf.minimum(max_inputs, n - 1)
    cut = tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1, dtype=tf.int32)
    return {"inputs": tokens[:cut], "targets": tokens[cut:]}

  return split(dataset.filter(lambda ex: tf.size(ex["targets"]) >= 2))
