"""Metrics of the built-in tasks, as T5 reports them (percentages, the same names).

Each is a seqio metric function `fn(targets, predictions) -> {name: value}` over postprocessed values. Invalid
predictions (postprocessed to -1) always count as wrong:

- `accuracy`: never equal to a target;
- `f1_with_invalid` (binary F1, MRPC/QQP/MultiRC): replaced by the opposite of the target, as T5 does;
- `mean_multiclass_f1` (CB): outside the scored labels, so a miss for the true class and no hit for any class;
- `matthews_corrcoef` (CoLA): a third class that matches no target;
- `pearson_corrcoef`/`spearman_corrcoef` (STS-B): a score of -1.0, below the 0..5 range.

Formulas come from scikit-learn and scipy, ROUGE from `rouge-score` and BLEU from `sacrebleu`; the only hand-written
ones are SQuAD's answer normalization and token F1 (SQuAD, MRQA, ReCoRD), which none of these libraries has.
"""

import collections
import re
import string
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import scipy.stats
import seqio
import sklearn.metrics

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, Any]]
NUM_TEXT_EXAMPLES = 8


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Percentage of predictions equal to their target."""
  return {"accuracy": 100 * sklearn.metrics.accuracy_score(targets, predictions)}


def f1_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 (positive class 1); a prediction other than 0/1 counts as the wrong class."""
  targets, predictions = np.asarray(targets), np.array(predictions)
  invalid = (predictions != 0) & (predictions != 1)
  predictions[invalid] = 1 - targets[invalid]
  return {"f1": 100 * sklearn.metrics.f1_score(targets, predictions)}


def mean_multiclass_f1(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, float]:
  """Macro-averaged F1 over classes 0..num_classes-1 (T5's `mean_<n>class_f1`)."""
  score = sklearn.metrics.f1_score(targets, predictions, labels=list(range(num_classes)), average="macro")
  return {f"mean_{num_classes}class_f1": 100 * score}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation, times 100."""
  return {"matthews_corrcoef": 100 * sklearn.metrics.matthews_corrcoef(targets, predictions)}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Pearson correlation, times 100."""
  return {"pearson_corrcoef": 100 * scipy.stats.pearsonr(targets, predictions)[0]}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Spearman rank correlation, times 100."""
  return {"spearman_corrcoef": 100 * scipy.stats.spearmanr(targets, predictions)[0]}


def sequence_exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions whose text equals the target text exactly."""
  return {"exact_match": 100 * float(np.mean([t == p for t, p in zip(targets, predictions)])) if targets else 0.0}


def normalize_squad_answer(text: str) -> str:
  """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
  text = "".join(c for c in text.lower() if c not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(prediction: str, answer: str) -> float:
  prediction_tokens, answer_tokens = prediction.split(), answer.split()
  common = sum((collections.Counter(prediction_tokens) & collections.Counter(answer_tokens)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(prediction_tokens), common / len(answer_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match and token F1 of each prediction, maximized over its gold answers (`targets`: a list of
  answers per example), averaged, times 100."""
  exact, f1 = [], []
  for gold, prediction in zip(targets, predictions):
    gold = [normalize_squad_answer(a) for a in gold] or [""]
    prediction = normalize_squad_answer(prediction)
    exact.append(max(float(prediction == a) for a in gold))
    f1.append(max(_token_f1(prediction, a) for a in gold))
  return {"em": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """ROUGE-1, ROUGE-2 and ROUGE-L F-measure (Porter-stemmed, as T5 and Li & Liang report), mean over examples x100.

  From Google's `rouge-score` package, the implementation T5 uses. T5 reports a bootstrap-aggregated mean; the plain
  mean here is that estimate's centre.
  """
  from rouge_score import rouge_scorer

  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  scores = [scorer.score(target, prediction) for target, prediction in zip(targets, predictions)]
  if not scores:
    return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  return {name: 100 * float(np.mean([s[name].fmeasure for s in scores])) for name in ("rouge1", "rouge2", "rougeL")}


def bleu(targets: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (sacrebleu's defaults) of one prediction per input against all of that input's references.

  Targets are `postprocessors.grouped_reference` values: tfds gives every reference of an E2E/WebNLG/DART table its
  own example, so references are gathered by input text and the first prediction for each input is scored, as
  the datasets' evaluation scripts score one output per table against every reference.
  """
  import sacrebleu

  references: dict[Hashable, list[str]] = {}
  hypotheses: dict[Hashable, str] = {}
  for target, prediction in zip(targets, predictions):
    references.setdefault(target["group"], []).append(target["reference"])
    hypotheses.setdefault(target["group"], prediction)
  if not hypotheses:
    return {"bleu": 0.0}
  groups = list(hypotheses)
  most = max(len(references[g]) for g in groups)
  # sacrebleu takes reference streams: stream k holds each input's k-th reference (None where it has fewer).
  streams = [[references[g][k] if k < len(references[g]) else None for g in groups] for k in range(most)]
  return {"bleu": float(sacrebleu.corpus_bleu([hypotheses[g] for g in groups], streams).score)}


def _first_per_group(targets: Sequence[dict], predictions: Sequence) -> tuple[list, list]:
  seen: dict[Hashable, int] = {}
  for i, target in enumerate(targets):
    seen.setdefault(target["group"], i)
  return [targets[i] for i in seen.values()], [predictions[i] for i in seen.values()]


def record_em_f1(targets: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
  """ReCoRD: SQuAD EM/F1 once per query (its copies, one per gold answer, are scored once), max over answers."""
  targets, predictions = _first_per_group(targets, predictions)
  return squad_em_f1([t["answers"] for t in targets], predictions)


def multirc_f1_over_all_answers(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
  """MultiRC F1a: binary F1 over every (question, answer) pair."""
  return f1_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
  """MultiRC EM: percentage of questions whose answers are all labeled correctly."""
  by_question: dict[Hashable, list[bool]] = collections.defaultdict(list)
  for target, prediction in zip(targets, predictions):
    by_question[target["group"]].append(target["value"] == prediction["value"])
  return {"exact_match": 100 * float(np.mean([all(v) for v in by_question.values()])) if by_question else 0.0}


def on_values(metric_fn: MetricFn) -> MetricFn:
  """Wraps a metric to read the `value` of `postprocessors.with_examples` outputs."""

  def metric(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, Any]:
    return metric_fn([t["value"] for t in targets], [p["value"] for p in predictions])

  metric.__name__ = getattr(metric_fn, "__name__", None) or metric_fn.func.__name__
  return metric


def text_examples(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, seqio.metrics.Text]:
  """The first few (input, target, prediction) texts of `with_examples` values, as one markdown text summary."""
  rows = []
  for i, (target, prediction) in enumerate(zip(targets[:NUM_TEXT_EXAMPLES], predictions[:NUM_TEXT_EXAMPLES])):
    rows.append(
      f"**{i}** input: `{target.get('inputs', '')}`  \ntarget: `{target['text']}`  \nprediction: `{prediction['text']}`"
    )
  return {"examples": seqio.metrics.Text(textdata="\n\n".join(rows))}
