"""The QA and generation tasks (SQuAD, the MRQA out-of-domain sets, XSum, E2E, WebNLG, DART) and their metrics.

Offline: tfds's mock data for the builds, hand-made examples in each dataset's tfds format for the formats and the
scoring path, and hand-worked scores for the metrics (what SQuAD's official evaluate-v1.1.py, Google's rouge-score
and the BLEU definition give on them).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from prompt_tuning.data import benchmarks, metrics, registry, tensorflow_setup, vocab  # noqa: E402

tensorflow_setup.limit_tensorflow_threads(2)

VOCAB_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "t5_spm_32000.model"
needs_vocab = pytest.mark.skipif(not VOCAB_PATH.exists(), reason=f"reference vocabulary {VOCAB_PATH} is absent")
NEW_COLLECTIONS = ("qa", "mrqa", "generation")
NEW_BENCHMARKS = [b for b in benchmarks.all_benchmarks() if b.collection in NEW_COLLECTIONS]
EXPECTED_START = {"qa": "question:", "mrqa": "question:", "xsum_v110": "summarize:", "e2e_cleaned_v010": "e2e:"}
EXPECTED_START.update({"web_nlg_v010": "webnlg:", "dart_v010": "dart:"})
ONE_TEXT = {b.name for b in NEW_BENCHMARKS if b.collection in ("qa", "mrqa")} | {"xsum_v110"}


@pytest.fixture(autouse=True, scope="module")
def _vocabulary_and_temporary_folders(tmp_path_factory):
  previous = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tfds"))
  vocab.set_vocabulary_path(str(VOCAB_PATH))
  yield
  vocab.set_vocabulary_path(None)
  tempfile.tempdir = previous


# ---------------------------------------------------------------------------------------------------------------------
# Hand-made examples in each dataset's tfds format.

SQUAD = {
  "id": "q1",
  "title": "Eiffel_Tower",
  "context": "The Eiffel Tower is in Paris, France.",
  "question": "Where is the Eiffel Tower?",
  "answers": {"text": ["Paris", "Paris, France"], "answer_start": [23, 23]},
}
MRQA = {
  "qid": "t1",
  "subset": "TextbookQA",
  "context": "Plants make food by photosynthesis.",
  "question": "How do plants make food?",
  "answers": ["photosynthesis", "by photosynthesis"],
}
XSUM = {"id": "1", "document": "The council met on Monday. It approved the new park.", "summary": "A park is approved."}


def _table(rows: list[tuple[str, int, str]]) -> dict:
  headers, numbers, contents = zip(*rows, strict=True)
  return {"table": {"column_header": list(headers), "row_number": list(numbers), "content": list(contents)}}


E2E = [
  {"input_text": _table([("name", 1, "The Eagle"), ("food", 1, "French")]), "target_text": text}
  for text in ("The Eagle serves French food.", "French food is served at The Eagle.")
]
WEB_NLG_TABLE = _table(
  [
    ("subject", 0, "Alan Bean"),
    ("predicate", 0, "occupation"),
    ("object", 0, "Test pilot"),
    ("subject", 1, "Alan Bean"),
    ("predicate", 1, "birthPlace"),
    ("object", 1, "Wheeler"),
  ]
)
WEB_NLG = [{"input_text": {**WEB_NLG_TABLE, "context": "Astronaut"}, "target_text": "Alan Bean was a test pilot."}]
DART = [{"input_text": WEB_NLG_TABLE, "target_text": "Alan Bean, born in Wheeler, was a test pilot."}]

HAND_MADE = {
  "squad_v010_allanswers": [SQUAD],
  "mrqa_textbookqa_v001": [MRQA],
  "xsum_v110": [XSUM],
  "e2e_cleaned_v010": E2E,
  "web_nlg_v010": WEB_NLG,
  "dart_v010": DART,
}
EXPECTED_INPUTS = {
  "squad_v010_allanswers": "question: Where is the Eiffel Tower ? context: The Eiffel Tower is in Paris , France .",
  "mrqa_textbookqa_v001": "question: How do plants make food ? context: Plants make food by photosynthesis .",
  "xsum_v110": "summarize: The council met on Monday. It approved the new park.",
  "e2e_cleaned_v010": "e2e: name : The Eagle | food : French",
  "web_nlg_v010": "webnlg: Alan Bean : occupation : Test pilot | Alan Bean : birthPlace : Wheeler",
  "dart_v010": "dart: Alan Bean : occupation : Test pilot | Alan Bean : birthPlace : Wheeler",
}


def _examples_of(task_name: str, split: str) -> list[dict]:
  """The task's preprocessed examples (tokenized, EOS appended) when tfds holds the hand-made examples."""
  base = task_name.removeprefix("task_index_").removeprefix("taskless_").removesuffix("_examples")
  rows = HAND_MADE[base]

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    if "input_text" in rows[0]:
      return _table_dataset(rows)
    return tf.data.Dataset.from_tensor_slices(_columns(rows))

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    return list(dataset.as_numpy_iterator())


def _columns(rows: list[dict]) -> dict:
  """Rows of nested dicts -> one dict of columns (lists stay values: SQuAD's answers are a list per row)."""
  return {k: _columns([r[k] for r in rows]) if isinstance(rows[0][k], dict) else [r[k] for r in rows] for k in rows[0]}


def _table_dataset(rows: list[dict]) -> tf.data.Dataset:
  def generator():
    yield from rows

  first = rows[0]
  table_spec = {
    "column_header": tf.TensorSpec([None], tf.string),
    "row_number": tf.TensorSpec([None], tf.int16),
    "content": tf.TensorSpec([None], tf.string),
  }
  input_spec = {
    "table": table_spec,
    **({"context": tf.TensorSpec([], tf.string)} if "context" in first["input_text"] else {}),
  }
  return tf.data.Dataset.from_generator(
    generator, output_signature={"input_text": input_spec, "target_text": tf.TensorSpec([], tf.string)}
  )


# ---------------------------------------------------------------------------------------------------------------------
# Registration and builds.


def test_reference_names_and_one_task_index_for_squad_and_mrqa():
  names = set(seqio.TaskRegistry.names())
  for name in ("squad_v010_allanswers_examples", *(f"mrqa_{n}_v001_examples" for n in benchmarks.MRQA_OUT_OF_DOMAIN)):
    assert name in names
  indices = {b.name: b.task_index for b in NEW_BENCHMARKS}
  # A SQuAD prompt reads the MRQA sets in SQuAD's own format, task-index sentinel included.
  assert {indices[b.name] for b in NEW_BENCHMARKS if b.collection in ("qa", "mrqa")} == {benchmarks.SQUAD_TASK_INDEX}
  assert len({indices[n] for n in ("xsum_v110", "e2e_cleaned_v010", "web_nlg_v010", "dart_v010")}) == 4
  assert all(not b.trainable for b in NEW_BENCHMARKS if b.collection == "mrqa")


# tfds's mock data draws the length of each column of a table apart, which the real data never has (a header and a
# row number per cell); the table-to-text tasks are built from the hand-made examples below instead.
MOCKED = [registry.variant_name(b.name, p) for b in NEW_BENCHMARKS for p in ("", "task_index_") if b.name in ONE_TEXT]


@needs_vocab
@pytest.mark.parametrize("name", MOCKED)
def test_new_task_builds_offline(name):
  with tfds.testing.mock_data(num_examples=1):
    task = seqio.get_mixture_or_task(name)
    split = "validation"
    example = next(task.get_dataset(sequence_length=None, split=split, shuffle=False).as_numpy_iterator())
  for feature in ("inputs", "targets"):
    ids = example[feature]
    assert ids[-1] == 1 and list(ids[:-1]) == vocab.DEFERRED_VOCABULARY.encode(
      example[f"{feature}_pretokenized"].decode()
    )
  inputs = example["inputs_pretokenized"].decode()
  benchmark = next(b for b in NEW_BENCHMARKS if name.endswith(b.name))
  if name.startswith("task_index_"):
    assert inputs.startswith(f"<extra_id_{benchmark.task_index}> ")
  else:
    assert inputs.startswith(EXPECTED_START.get(benchmark.name, EXPECTED_START.get(benchmark.collection)))


@needs_vocab
@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_formats_of_hand_made_examples(name):
  examples = _examples_of(name, "validation")
  assert examples[0]["inputs_pretokenized"].decode() == EXPECTED_INPUTS[name]
  for example in examples:
    assert example["targets"][-1] == 1  # tokenized, EOS appended
  targets = [e["targets_pretokenized"].decode() for e in examples]
  expected_targets = {
    "squad_v010_allanswers": ["Paris"],
    "mrqa_textbookqa_v001": ["photosynthesis"],
    "xsum_v110": ["A park is approved."],
  }
  if name in expected_targets:
    assert targets == expected_targets[name]
  else:
    assert targets == [r["target_text"] for r in HAND_MADE[name]]


@needs_vocab
def test_squad_scores_every_gold_answer_through_the_task():
  task = seqio.get_mixture_or_task("squad_v010_allanswers_examples")
  [example] = _examples_of("squad_v010_allanswers_examples", "validation")
  target = task.postprocess_fn(example["targets_pretokenized"], example=example, is_target=True)
  assert target["value"] == ["Paris", "Paris , France"]
  scores = {}
  for prediction_text in ("paris, france", "in France"):
    prediction = task.postprocess_fn(prediction_text.encode(), example=example, is_target=False)
    for metric_fn in task.metric_fns:
      scores.setdefault(prediction_text, {}).update(metric_fn([target], [prediction]))
  # Normalized, "paris, france" is the second answer exactly; "in France" shares "france" with it: P 1/2, R 1/2.
  assert scores["paris, france"]["em"] == 100.0 and scores["paris, france"]["f1"] == 100.0
  assert scores["in France"]["em"] == 0.0 and scores["in France"]["f1"] == pytest.approx(50.0)
  assert "examples" in scores["in France"]


@needs_vocab
def test_table_to_text_scores_one_output_per_table_against_every_reference():
  task = seqio.get_mixture_or_task("task_index_e2e_cleaned_v010")
  examples = _examples_of("task_index_e2e_cleaned_v010", "validation")
  assert examples[0]["inputs_pretokenized"].decode().startswith("<extra_id_20> name : The Eagle")
  targets = [task.postprocess_fn(e["targets_pretokenized"], example=e, is_target=True) for e in examples]
  assert len({t["group"] for t in targets}) == 1  # two references of one table
  # The model writes the second reference for both copies of the table: BLEU 100 against the pair of references.
  predictions = [task.postprocess_fn(b"French food is served at The Eagle.", example=e) for e in examples]
  assert task.metric_fns[0](targets, predictions)["bleu"] == pytest.approx(100.0)


def test_squad_metric_matches_the_official_script_on_hand_made_answers():
  # Official normalization: lower case, punctuation and articles removed; max over the gold answers.
  answers = [["Eiffel Tower", "the tower"], ["Paris"], ["Denver Broncos"]]
  predictions = ["The Eiffel tower!", "in Paris France", "Carolina Panthers"]
  scores = metrics.squad_em_f1(answers, predictions)
  # EM: 1, 0, 0. F1: 1; "in paris france" vs "paris": P 1/3, R 1 -> 0.5; 0.
  assert scores["em"] == pytest.approx(100 / 3)
  assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)


def test_rouge_on_hand_worked_examples():
  scores = metrics.rouge(["the cat sat on the mat"], ["The cat sat."])
  # Unigrams: 3 of 3 predicted appear (P 1), 3 of 6 reference (R 1/2): F 2/3. Bigrams: 2 of 2, 2 of 5: F 4/7.
  # Longest common subsequence 3: as unigrams.
  assert scores["rouge1"] == pytest.approx(200 / 3)
  assert scores["rouge2"] == pytest.approx(400 / 7)
  assert scores["rougeL"] == pytest.approx(200 / 3)
  # Porter stemming, as T5 reports it: "sitting cats" matches "cat sits" on both words.
  assert metrics.rouge(["cat sits"], ["sitting cats"])["rouge1"] == pytest.approx(100.0)


def test_bleu_on_hand_worked_examples():
  group = lambda g, text: {"group": g, "reference": text}
  # One longer hypothesis: n-gram precisions 6/7, 5/6, 4/5, 3/4; no brevity penalty: BLEU = (3/7) ** (1/4).
  scores = metrics.bleu([group("a", "the cat sat on the mat")], ["the cat sat on the mat today"])
  assert scores["bleu"] == pytest.approx(100 * (3 / 7) ** 0.25, abs=1e-3)
  # References gathered by input: the second table's output matches its second reference exactly; the first table
  # has one reference only (sacrebleu's `None` for the missing one).
  targets = [group("a", "x y z w"), group("b", "one two three four"), group("b", "five six seven eight")]
  outputs = ["x y z w", "five six seven eight", "ignored: one output per table"]
  assert metrics.bleu(targets, outputs)["bleu"] == pytest.approx(100.0)


def test_squad_to_mrqa_mixture_trains_on_squad_and_evaluates_out_of_domain():
  mixture = seqio.get_mixture_or_task("squad_to_textbookqa_examples")
  assert {t.name for t in mixture.tasks} == {"squad_v010_allanswers_examples", "mrqa_textbookqa_v001_examples"}
  assert "train" not in seqio.get_mixture_or_task("mrqa_textbookqa_v001").splits
  everything = seqio.get_mixture_or_task("task_index_squad_to_mrqa")
  assert len(everything.tasks) == 1 + len(benchmarks.MRQA_OUT_OF_DOMAIN)
