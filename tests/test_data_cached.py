"""USE_CACHED_TASKS (t5x's macro): runs read a task from seqio's offline cache, found in the folders given by
--seqio_additional_cache_dirs; a cacheable task missing from the cache is our error, not a silent fallback.

The cache is written here in seqio's own layout (what its cache_tasks_main beam job writes: COMPLETED,
info.<split>.json, stats.<split>.json, <split>.tfrecord-00000-of-00001), with texts that differ from the task's
source, so a test can tell which one was read.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402

import pytest  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from prompt_tuning import data, inputs  # noqa: E402
from prompt_tuning.data import sources  # noqa: E402

TASK = "cacheable_yes_no"
LENGTHS = {"inputs": 8, "targets": 4}


@pytest.fixture(scope="module")
def vocab(reference_dir):
  return seqio.SentencePieceVocabulary(str(reference_dir / "t5_spm_32000.model"), extra_ids=100)


def _source(split, shuffle_files, seed=None):
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"inputs": [f"source {i}" for i in range(3)], "targets": ["no"] * 3})


def _register(name, vocab):
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
      name,
      seqio.FunctionDataSource(_source, splits=["validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos],
      output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
      metric_fns=[],
    )
  return name


def _write_cache(root, name, vocab, texts):
  folder = root / name
  folder.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(folder / "validation.tfrecord-00000-of-00001")) as writer:
    for text in texts:
      feature = {
        "inputs": tf.train.Feature(int64_list=tf.train.Int64List(value=vocab.encode(text))),
        "targets": tf.train.Feature(int64_list=tf.train.Int64List(value=vocab.encode("yes"))),
        "inputs_pretokenized": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
        "targets_pretokenized": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"yes"])),
      }
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  features = {
    "inputs": {"shape": [None], "dtype": "int32"},
    "targets": {"shape": [None], "dtype": "int32"},
    "inputs_pretokenized": {"shape": [], "dtype": "string"},
    "targets_pretokenized": {"shape": [], "dtype": "string"},
  }
  info = {"features": features, "num_shards": 1, "seqio_version": seqio.__version__}
  (folder / "info.validation.json").write_text(json.dumps(info))
  (folder / "stats.validation.json").write_text(json.dumps({"examples": len(texts)}))
  (folder / "COMPLETED").write_text("")


@pytest.fixture
def cached_reads():
  yield
  data.set_use_cached_tasks(False)


def _first_inputs(vocab, task):
  batch = inputs.eval_batches(task, LENGTHS, 4)[0]
  return vocab.decode([int(t) for t in batch["encoder_input_tokens"][0] if t > 1])


def test_use_cached_tasks_reads_the_cache(tmp_path, vocab, cached_reads):
  task = _register(TASK, vocab)
  _write_cache(tmp_path, task, vocab, ["cached 0", "cached 1"])
  seqio.add_global_cache_dirs([str(tmp_path)])
  assert _first_inputs(vocab, task) == "source 0"
  data.set_use_cached_tasks(True)
  assert _first_inputs(vocab, task) == "cached 0"
  assert len(inputs.eval_batches(task, LENGTHS, 1)) == 2  # the cache's two examples, not the source's three


def test_a_cacheable_task_missing_from_the_cache_is_our_error(vocab, cached_reads):
  task = _register("cacheable_but_not_cached", vocab)
  data.set_use_cached_tasks(True)
  with pytest.raises(data.DataConfigError, match="--seqio_additional_cache_dirs, or set USE_CACHED_TASKS=False"):
    inputs.eval_batches(task, LENGTHS, 4)
  assert sources.use_cached_tasks()
