"""T5's prefix LM, the "LM adaptation" objective (prompt_tuning/data/prefix_lm.py): cuts, lengths, determinism."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import prefix_lm

LENGTHS = {"inputs": 16, "targets": 8}


def _pipeline(seed, lines, lengths=LENGTHS):
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(lines, dtype=tf.int32)})
  ds = ds.map(lambda ex: {"targets": ex["targets"]})
  with seqio.utils.map_seed_manager(seed):
    ds = prefix_lm.concatenate_and_split(ds, lengths)
    ds = prefix_lm.split_inputs_and_targets(ds, lengths)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_each_chunk_is_cut_once_into_a_prefix_and_its_continuation():
  lines = [list(range(10 + 50 * i, 10 + 50 * i + n)) for i, n in enumerate([27, 3, 32, 39, 20, 35])]
  stream = [t for line in lines for t in line]
  examples = _pipeline(42, lines)
  size = prefix_lm.chunk_length(LENGTHS)
  assert size == 15 and len(examples) == -(-len(stream) // size)
  rebuilt, cuts = [], set()
  for ex in examples:
    # Both sides are non-empty and leave room for their EOS.
    assert 1 <= len(ex["inputs"]) <= LENGTHS["inputs"] - 1 and 1 <= len(ex["targets"]) <= LENGTHS["targets"] - 1
    rebuilt.extend(ex["inputs"] + ex["targets"])
    cuts.add(len(ex["inputs"]))
  assert rebuilt == stream  # in order, nothing lost or repeated
  assert len(cuts) > 1  # the cut point is random, not fixed
  assert _pipeline(42, lines) == examples
  assert _pipeline(43, lines) != examples


def test_cut_points_cover_every_allowed_position():
  lines = [list(range(1, 16))] * 400  # full chunks of 15 tokens; at most 15 in the inputs and 7 in the targets
  cuts = {len(ex["inputs"]) for ex in _pipeline(0, lines)}
  assert cuts == set(range(15 - 7, 15))  # exactly the cuts that fit both sides, each side non-empty


def test_lengths_too_small_are_refused():
  with pytest.raises(ValueError, match="at least 2"):
    prefix_lm.chunk_length({"inputs": 1, "targets": 8})


def test_demo_corpus_task_with_the_prefix_lm_objective(tmp_path):
  from prompt_tuning import demo_data
  from prompt_tuning.demo_data import pretraining

  text = "Thank you for inviting me to your party last week. In the beginning was the word."
  for split in pretraining.SPLITS:
    (tmp_path / f"{split}.txt").write_text("\n".join([text] * 20) + "\n")
  name = pretraining.register_pretraining_task(
    corpus_dir=str(tmp_path), vocabulary_path=str(demo_data.DEMO_VOCABULARY), objective="prefix_lm"
  )
  assert name == pretraining.PREFIX_LM_TASK_NAME
  task = seqio.get_mixture_or_task(name)
  lengths = {"inputs": 24, "targets": 12}
  examples = list(task.get_dataset(lengths, split="validation", shuffle=False, seed=0).as_numpy_iterator())
  vocabulary = task.output_features["targets"].vocabulary
  assert examples
  for ex in examples[:-1]:
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS on both sides
    assert len(ex["inputs"]) + len(ex["targets"]) == prefix_lm.chunk_length(lengths) + 2
    assert len(ex["inputs"]) <= lengths["inputs"] and len(ex["targets"]) <= lengths["targets"]
    assert not np.any(ex["inputs"] >= vocabulary.vocab_size - 100)  # plain text, no sentinels
  with pytest.raises(ValueError, match="objective"):
    pretraining.register_pretraining_task(
      corpus_dir=str(tmp_path), vocabulary_path=str(demo_data.DEMO_VOCABULARY), objective="denoise"
    )
