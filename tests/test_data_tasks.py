"""Every registered task and mixture builds offline (tfds mock data) and yields the expected features."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import functools  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import gin  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import prompt_tuning.data as data  # noqa: E402
from prompt_tuning.data import benchmarks, registry, sources, tensorflow_setup, vocab  # noqa: E402
from prompt_tuning.data.cli import gin_macro_value  # noqa: E402

tensorflow_setup.limit_tensorflow_threads(2)

VOCAB_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "t5_spm_32000.model"
needs_vocab = pytest.mark.skipif(not VOCAB_PATH.exists(), reason=f"reference vocabulary {VOCAB_PATH} is absent")


@pytest.fixture(autouse=True, scope="module")
def _temporary_folders_under_pytest(tmp_path_factory):
  """tfds' mock_data makes a temporary folder per mocked dataset (about 500 in this module) and leaves them; put them
  under pytest's own temporary root, which pytest prunes, instead of the system's."""
  previous = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tfds"))
  yield
  tempfile.tempdir = previous


@pytest.fixture(scope="module")
def mock_tfds():
  """Vocabulary configured and tfds mocked (one generated example per split) for the whole module."""
  vocab.set_vocabulary_path(str(VOCAB_PATH))
  with tfds.testing.mock_data(num_examples=1):
    yield
  vocab.set_vocabulary_path(None)


def _first_split(task: seqio.Task) -> str:
  return "validation" if "validation" in task.splits else task.splits[0]


def test_builtin_names_follow_the_reference_pattern():
  names = data.builtin_task_names()
  assert len(names) == len(benchmarks.all_benchmarks()) * 6 == 192
  for expected in (
    "super_glue_boolq_v102",
    "taskless_super_glue_boolq_v102",
    "task_index_super_glue_boolq_v102_examples",
    "taskless_glue_sst2_v200_examples",
    "glue_mnli_v200",
    "super_glue_wsc_v102",
    "super_glue_axb_v102",
    "glue_qqp_to_mrpc_v200",
    "taskless_glue_mrpc_to_qqp_v200",
    "squad_v010_allanswers_examples",
    "mrqa_textbookqa_v001_examples",
    "xsum_v110",
    "dart_v010",
  ):
    assert expected in names
    assert expected in seqio.TaskRegistry.names()
  assert "super_glue_v102_proportional" in seqio.MixtureRegistry.names()
  assert "task_index_glue_v200_proportional_examples" in seqio.MixtureRegistry.names()
  for expected in ("squad_to_textbookqa_examples", "squad_to_mrqa_examples"):
    assert expected in seqio.MixtureRegistry.names()  # the reference implementation's names
  assert len(data.builtin_mixture_names()) == 12 + 7 * 6


def test_registration_is_idempotent():
  before = (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names()))
  data.register_builtin_tasks()
  import prompt_tuning.data  # noqa: F401 - a second import must not register again (or fail).

  assert (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names())) == before


def test_task_indices_are_distinct_per_format():
  by_index = {}
  for benchmark in benchmarks.all_benchmarks():
    by_index.setdefault(benchmark.task_index, set()).add(benchmark.prefix)
  # One index per input format; only RTE-cast diagnostics, the two paraphrase directions and SQuAD with the MRQA
  # sets it is evaluated on share one.
  assert all(len(prefixes) == 1 for prefixes in by_index.values()), by_index
  assert sorted(by_index) == list(range(23))


CLASSIFICATION_BENCHMARKS = [
  b.name for b in benchmarks.all_benchmarks() if b.collection in ("super_glue", "glue", "transfer")
]
# Each input variant (prefix) is built; a suffix variant ("_examples": its scoring also logs example texts) is the
# same dataset, which test_every_suffix_variant_is_the_dataset_of_its_base_variant proves from its parts.
CLASSIFICATION_TASKS = [
  registry.variant_name(b, p) for b in CLASSIFICATION_BENCHMARKS for p in registry.PREFIX_VARIANTS
]
SUFFIXED_TASKS = [
  (registry.variant_name(b, p, s), registry.variant_name(b, p))
  for b in CLASSIFICATION_BENCHMARKS
  for p in registry.PREFIX_VARIANTS
  for s in registry.SUFFIX_VARIANTS
  if s
]


def _pipeline(task: seqio.Task) -> tuple:
  """What a task's dataset is made of, comparable: its source, its preprocessors (a partial by its function and
  arguments, a cache placeholder by its settings, a function as itself) and its output features."""

  def comparable(preprocessor):
    if isinstance(preprocessor, functools.partial):
      return preprocessor.func, preprocessor.args, preprocessor.keywords
    if isinstance(preprocessor, seqio.CacheDatasetPlaceholder):
      return type(preprocessor), vars(preprocessor)
    return preprocessor

  return task.source, [comparable(p) for p in task.preprocessors], task.output_features


def test_every_suffix_variant_is_the_dataset_of_its_base_variant():
  assert len(SUFFIXED_TASKS) == len(CLASSIFICATION_TASKS) * (len(registry.SUFFIX_VARIANTS) - 1)
  for name, base in SUFFIXED_TASKS:
    task, base_task = seqio.get_mixture_or_task(name), seqio.get_mixture_or_task(base)
    assert _pipeline(task) == _pipeline(base_task), name
    assert task.source is base_task.source and len(task.preprocessors) == len(base_task.preprocessors) == 4, name
    assert data.get_class_labels(name) == data.get_class_labels(base), name
    assert task.postprocessor is not base_task.postprocessor, name  # the scoring that logs example texts


@needs_vocab
@pytest.mark.parametrize("name", CLASSIFICATION_TASKS)
def test_every_task_builds_offline(name, mock_tfds):
  """GLUE, SuperGLUE and the paraphrase transfer tasks, every input variant; each suffix variant is the same dataset
  (test_every_suffix_variant_is_the_dataset_of_its_base_variant). QA and generation: test_data_qa_generation."""
  del mock_tfds
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(sequence_length=None, split=_first_split(task), shuffle=False, num_epochs=1)
  example = next(dataset.as_numpy_iterator())
  for feature in ("inputs", "targets"):
    assert dataset.element_spec[feature].dtype == tf.int32
    ids = example[feature]
    assert ids.ndim == 1 and ids.size >= 2 and ids[-1] == 1  # EOS appended.
    text = example[f"{feature}_pretokenized"].decode()
    assert isinstance(text, str)
    assert list(ids[:-1]) == vocab.DEFERRED_VOCABULARY.encode(text)
  inputs = example["inputs_pretokenized"].decode()
  if name.startswith("task_index_"):
    assert inputs.startswith("<extra_id_")
  labels = data.get_class_labels(name)
  if labels is not None and "multirc" not in name:
    assert example["targets_pretokenized"].decode() in labels


@needs_vocab
@pytest.mark.parametrize("name", ["super_glue_v102_proportional", "taskless_glue_v200_proportional_examples"])
def test_mixture_builds_offline(name, mock_tfds):
  del mock_tfds
  mixture = seqio.get_mixture_or_task(name)
  dataset = mixture.get_dataset(sequence_length={"inputs": 64, "targets": 8}, split="train", shuffle=False, seed=0)
  examples = list(dataset.take(4).as_numpy_iterator())
  assert len(examples) == 4
  assert all(e["inputs"].dtype == np.int32 for e in examples)


def test_mixtures_hold_the_trainable_tasks_of_their_variant():
  mixture = seqio.get_mixture_or_task("task_index_super_glue_v102_proportional_examples")
  expected = {
    f"task_index_super_glue_{c}_v102_examples"
    for c in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
  }
  assert {t.name for t in mixture.tasks} == expected
  glue = seqio.get_mixture_or_task("glue_v200_proportional")
  assert len(glue.tasks) == 9
  # Rates come from tfds metadata when prepared, else from the published split sizes.
  assert glue.get_rate(seqio.get_mixture_or_task("glue_rte_v200")) == 2490


def test_label_names_match_tfds_metadata():
  for benchmark in benchmarks.all_benchmarks():
    if benchmark.class_labels is None or benchmark.collection == "transfer":
      continue
    tfds_name = next(iter(benchmark.source.tfds_splits.values())).name
    assert tfds.builder(tfds_name).info.features["label"].names == list(benchmark.class_labels), benchmark.name


def test_published_sizes_cover_every_split():
  for benchmark in benchmarks.all_benchmarks():
    for split in benchmark.source.splits:
      size = benchmark.source.num_input_examples(split)
      if benchmark.collection == "generation":
        # Not in any size-weighted mixture; their sizes come from tfds's metadata once prepared.
        assert size is None, (benchmark.name, split)
      else:
        assert size > 0, (benchmark.name, split)
  assert list(data.get_task_or_mixture("glue_mnli_v200").splits) == [
    "train",
    "validation",
    "validation_matched",
    "validation_mismatched",
    "test_matched",
    "test_mismatched",
  ]


def test_wsc_trains_on_positive_examples_only():
  source = seqio.get_mixture_or_task("super_glue_wsc_v102").source
  with tfds.testing.mock_data(num_examples=12):
    train = [int(x["label"]) for x in source.get_dataset("train", shuffle=False).as_numpy_iterator()]
    validation = [int(x["label"]) for x in source.get_dataset("validation", shuffle=False).as_numpy_iterator()]
  assert train and set(train) == {1}
  assert len(validation) == 12


def test_transfer_tasks_read_train_and_eval_from_different_datasets():
  qqp_to_mrpc = seqio.get_mixture_or_task("glue_qqp_to_mrpc_v200").source.tfds_splits
  assert qqp_to_mrpc["train"] == sources.TfdsSplit("glue/qqp:2.0.0", "train")
  assert qqp_to_mrpc["validation"] == sources.TfdsSplit("glue/mrpc:2.0.0", "validation")
  mrpc_to_qqp = seqio.get_mixture_or_task("glue_mrpc_to_qqp_v200").source.tfds_splits
  assert mrpc_to_qqp["train"].name == "glue/mrpc:2.0.0" and mrpc_to_qqp["validation"].name == "glue/qqp:2.0.0"
  assert data.get_class_labels("glue_qqp_to_mrpc_v200") == data.get_class_labels("glue_mrpc_to_qqp_v200")


def test_class_labels_of_every_variant():
  for name in ("super_glue_boolq_v102", "taskless_super_glue_boolq_v102", "task_index_super_glue_boolq_v102_examples"):
    assert data.get_class_labels(name) == ["False", "True"]
  assert data.get_class_labels("glue_cola_v200") == ["unacceptable", "acceptable"]
  assert data.get_class_labels("taskless_super_glue_rte_v102") == ["entailment", "not_entailment"]
  assert data.get_class_labels("super_glue_cb_v102_examples") == ["entailment", "contradiction", "neutral"]
  assert data.get_class_labels("glue_qqp_to_mrpc_v200") == ["not_equivalent", "equivalent"]
  for name in ("super_glue_record_v102", "super_glue_wsc_v102", "glue_stsb_v200"):
    assert data.get_class_labels(name) is None
  sg_labels = data.get_class_labels("super_glue_v102_proportional")
  assert sg_labels[:2] == ["False", "True"] and "choice1" in sg_labels and len(sg_labels) == len(set(sg_labels))


def test_class_labels_of_unknown_task_suggest_close_names():
  with pytest.raises(data.UnknownTaskError, match="did you mean.*super_glue_boolq_v102"):
    data.get_class_labels("super_glue_boolq_v10")


def test_class_labels_for_task_through_gin():
  gin.clear_config()
  try:
    gin.parse_config(
      [
        "MIXTURE_OR_TASK_NAME = 'taskless_glue_sst2_v200_examples'",
        "prompt_tuning.data.class_labels_for_task.task_name = %MIXTURE_OR_TASK_NAME",
        "consumer/prompt_tuning.data.cli.gin_macro_value.value = @prompt_tuning.data.class_labels_for_task()",
      ]
    )
    with gin.config_scope("consumer"):
      assert gin_macro_value() == ["negative", "positive"]
    with pytest.raises(data.DataConfigError, match="has no class labels"):
      data.class_labels_for_task("super_glue_record_v102")
  finally:
    gin.clear_config()


def test_unknown_task_lookup_suggests_close_matches():
  with pytest.raises(data.UnknownTaskError) as error:
    data.get_task_or_mixture("glue_sst_v200")
  assert "glue_sst2_v200" in error.value.suggestions
  assert "prompt-tuning tasks list" in str(error.value)


def test_every_task_has_valid_metric_signatures():
  for name in registry.builtin_task_names():
    task = seqio.get_mixture_or_task(name)
    assert task.predict_metric_fns, name  # seqio checks the (targets, predictions) signatures here.
    assert not task.score_metric_fns
