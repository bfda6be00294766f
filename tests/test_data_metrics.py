"""Postprocessors and metrics against scikit-learn / scipy on fixed predictions, invalid predictions included."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402
import seqio  # noqa: E402
import sklearn.metrics  # noqa: E402

import prompt_tuning.data  # noqa: E402, F401 - registers the tasks.
from prompt_tuning.data import metrics  # noqa: E402

# Raw model outputs for a binary task; "maybe" and "" are not labels.
BINARY_TARGETS = ["True", "False", "True", "True", "False", "False", "True"]
BINARY_PREDICTIONS = ["True", "maybe", "False", "", "False", "True", "True"]


def postprocess(task_name: str, texts, examples=None, is_target=False) -> list:
  task = seqio.get_mixture_or_task(task_name)
  examples = examples or [{}] * len(texts)
  return [task.postprocess_fn(t, example=e, is_target=is_target) for t, e in zip(texts, examples)]


def score(task_name: str, targets: list, predictions: list) -> dict:
  results = {}
  for metric_fn in seqio.get_mixture_or_task(task_name).metric_fns:
    results.update(metric_fn(targets, predictions))
  return results


def test_classification_postprocessor_maps_invalid_text_to_minus_one():
  assert postprocess("super_glue_boolq_v102", BINARY_PREDICTIONS) == [1, -1, 0, -1, 0, 1, 1]
  assert postprocess("glue_cola_v200", [b"acceptable", "unacceptable ", "Acceptable"]) == [1, 0, -1]
  assert postprocess("glue_stsb_v200", ["3.8", "five", b"0.2"]) == [3.8, -1.0, 0.2]


def test_accuracy_counts_invalid_predictions_as_wrong():
  targets, predictions = (
    postprocess("super_glue_boolq_v102", BINARY_TARGETS),
    postprocess("super_glue_boolq_v102", BINARY_PREDICTIONS),
  )
  expected = 100 * sklearn.metrics.accuracy_score(targets, predictions)
  assert score("super_glue_boolq_v102", targets, predictions) == {"accuracy": pytest.approx(expected)}
  assert expected == pytest.approx(100 * 3 / 7)


def test_binary_f1_treats_invalid_predictions_as_the_wrong_class():
  targets = [1, 0, 1, 1, 0, 0, 1]
  predictions = [1, -1, 0, -1, 0, 1, 1]
  as_wrong_class = [1, 1, 0, 0, 0, 1, 1]  # Each -1 replaced by the opposite of its target.
  result = score("glue_mrpc_v200", targets, predictions)
  assert result["f1"] == pytest.approx(100 * sklearn.metrics.f1_score(targets, as_wrong_class))
  assert result["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(targets, predictions))
  assert set(score("glue_qqp_v200", targets, predictions)) == {"f1", "accuracy"}


def test_cb_macro_f1_over_three_classes_and_accuracy():
  targets = [0, 1, 2, 2, 1, 0, 0]
  predictions = [0, 2, 2, -1, 1, 0, 1]
  result = score("super_glue_cb_v102", targets, predictions)
  expected_f1 = sklearn.metrics.f1_score(targets, predictions, labels=[0, 1, 2], average="macro")
  assert result["mean_3class_f1"] == pytest.approx(100 * expected_f1)
  assert result["accuracy"] == pytest.approx(100 * 4 / 7)


def test_cola_matthews_correlation():
  targets = [1, 0, 1, 1, 0, 0, 1, 1]
  predictions = [1, 0, 0, -1, 0, 1, 1, 1]
  expected = 100 * sklearn.metrics.matthews_corrcoef(targets, predictions)
  assert score("glue_cola_v200", targets, predictions) == {"matthews_corrcoef": pytest.approx(expected)}


def test_stsb_pearson_and_spearman_times_100():
  targets = [0.0, 1.2, 2.6, 3.8, 5.0, 4.4]
  predictions = postprocess("glue_stsb_v200", ["0.2", "1.0", "not a number", "3.6", "4.8", "4.4"])
  result = score("glue_stsb_v200", targets, predictions)
  assert result["pearson_corrcoef"] == pytest.approx(100 * scipy.stats.pearsonr(targets, predictions)[0])
  assert result["spearman_corrcoef"] == pytest.approx(100 * scipy.stats.spearmanr(targets, predictions)[0])


def _multirc_examples():
  # Two questions of paragraph 0 (q0: 3 answers, q1: 2 answers) and one question 0 of paragraph 1 (same index!).
  ids = [(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]
  return [{"idx/paragraph": p, "idx/question": q} for p, q in ids]


def test_multirc_f1_over_answers_and_exact_match_over_questions():
  examples = _multirc_examples()
  targets = postprocess("super_glue_multirc_v102", ["True", "False", "True", "False", "False", "True"], examples, True)
  predictions = postprocess("super_glue_multirc_v102", ["True", "False", "True", "True", "nonsense", "True"], examples)
  result = score("super_glue_multirc_v102", targets, predictions)
  target_values = [1, 0, 1, 0, 0, 1]
  as_wrong_class = [1, 0, 1, 1, 1, 1]
  assert result["f1"] == pytest.approx(100 * sklearn.metrics.f1_score(target_values, as_wrong_class))
  # Question (0, 0) all right, (0, 1) wrong, (1, 0) right: grouped by paragraph and question, not question alone.
  assert result["exact_match"] == pytest.approx(100 * 2 / 3)


def test_record_scores_each_query_once_with_max_over_answers():
  answers = [b"Badam Bagh", b"Badam Bagh prison"]
  examples = [{"idx/passage": 0, "idx/query": 0, "answers": answers}] * 2 + [
    {"idx/passage": 0, "idx/query": 1, "answers": [b"the BBC"]}
  ]
  targets = postprocess("super_glue_record_v102", ["Badam Bagh", "Badam Bagh prison", "the BBC"], examples, True)
  predictions = postprocess(
    "super_glue_record_v102", ["badam bagh prison!", "badam bagh prison!", "BBC News"], examples
  )
  result = score("super_glue_record_v102", targets, predictions)
  # Query 0: exact after normalization; query 1: "bbc news" vs "bbc" -> EM 0, F1 2*(1/2*1)/(1/2+1) = 2/3.
  assert result["em"] == pytest.approx(50.0)
  assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_squad_normalization():
  assert metrics.normalize_squad_answer("The  Cat, sat!") == "cat sat"
  assert metrics.normalize_squad_answer("an apple a day") == "apple day"


def test_wsc_postprocessor_checks_the_predicted_referent():
  example = {"targets_pretokenized": b"the fuzzy bunny", "label": 1}
  predictions = ["The fuzzy bunny", "bunny", "Bob's bunny", "the dog", "", "  "]
  assert postprocess("super_glue_wsc_v102", predictions, [example] * 6) == [1, 1, 0, 0, -1, -1]
  assert postprocess("super_glue_wsc_v102", ["x"], [example], is_target=True) == [1]
  assert score("super_glue_wsc_v102", [1, 0, 1, 0], [1, 1, -1, 0]) == {"accuracy": 50.0}


def test_examples_variant_logs_input_target_prediction_texts():
  task_name = "taskless_glue_sst2_v200_examples"
  examples = [{"inputs_pretokenized": f"sentence: review {i}".encode()} for i in range(10)]
  targets = postprocess(task_name, ["positive", "negative"] * 5, examples, is_target=True)
  predictions = postprocess(task_name, ["positive", "negative", "meh", "negative", "positive"] * 2, examples)
  result = score(task_name, targets, predictions)
  assert result["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score([1, 0] * 5, [1, 0, -1, 0, 1] * 2))
  text = result["examples"]
  assert isinstance(text, seqio.metrics.Text)
  assert "sentence: review 2" in text.textdata and "prediction: `meh`" in text.textdata
  assert text.textdata.count("input:") == metrics.NUM_TEXT_EXAMPLES


def test_examples_variant_keeps_structured_values():
  task_name = "super_glue_multirc_v102_examples"
  examples = _multirc_examples()
  targets = postprocess(task_name, ["True", "False", "True", "False", "False", "True"], examples, True)
  predictions = postprocess(task_name, ["True", "False", "True", "True", "nonsense", "True"], examples)
  result = score(task_name, targets, predictions)
  assert result["exact_match"] == pytest.approx(100 * 2 / 3) and "examples" in result


def test_sequence_exact_match():
  assert metrics.sequence_exact_match(["a b", "c", "d"], ["a b", "c ", "d"]) == {"exact_match": pytest.approx(200 / 3)}
  assert metrics.sequence_exact_match([], []) == {"exact_match": 0.0}


def test_metrics_accept_numpy_inputs():
  targets, predictions = np.array([1, 0, 1]), np.array([1, -1, 1])
  # The invalid prediction for target 0 becomes 1: one false positive, F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8.
  assert metrics.f1_with_invalid(targets, predictions)["f1"] == pytest.approx(80.0)
  assert list(predictions) == [1, -1, 1]  # The caller's array is not modified.
