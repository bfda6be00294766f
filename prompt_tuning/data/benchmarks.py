"""The built-in tasks, one `Benchmark` each: where the data is, how T5 formats it, how it is scored.

`registry.py` turns each into six seqio tasks (the `taskless_` / `task_index_` / `_examples` variants).

Label names are those of the tfds datasets (label id i is `class_labels[i]`). Task indices (the sentinel of the
`task_index_` variants) are fixed here, once for all benchmarks, so that a multi-task prompt sees one sentinel per
task: SuperGLUE 0-7 (AX-b and AX-g are cast as SuperGLUE RTE, as T5 does, so they share its index 5), GLUE 8-16,
17 for the paraphrase transfer tasks, 18 for SQuAD and the MRQA sets evaluated in its format, 19-22 for XSum, E2E,
WebNLG and DART.

MNLI is one task with splits train, validation_matched, validation_mismatched, test_matched, test_mismatched, and
`validation` = validation_matched (so that evaluating a mixture on `validation` includes it).

Metrics follow T5 (accuracy; F1 and accuracy for MRPC/QQP; mean 3-class F1 and accuracy for CB; Matthews correlation
for CoLA; Pearson and Spearman for STS-B; F1a and question exact match for MultiRC; SQuAD EM/F1 for ReCoRD), except
that the diagnostics, which T5 leaves unscored, get their official metrics: Matthews correlation for AX-b, accuracy
for AX-g.

Transfer tasks (Lester et al. 2021, section 6, zero-shot domain shift between paraphrase datasets):
`glue_qqp_to_mrpc_v200` trains on QQP's train split and evaluates on MRPC (its `validation`/`test` splits are MRPC's);
`glue_mrpc_to_qqp_v200` is the reverse. Both directions use one shared format and one label pair, so that a prompt
trained on either dataset sees the other in exactly the form it was trained on:

  inputs:  "paraphrase sentence1: <first text> sentence2: <second text>"   (QQP's question1/question2 renamed)
  targets: "equivalent" / "not_equivalent"   (QQP "duplicate" -> "equivalent", "not_duplicate" -> "not_equivalent")
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import seqio

from prompt_tuning.data import metrics, postprocessors, preprocessors
from prompt_tuning.data.sources import TfdsSource, TfdsSplit

PARAPHRASE_LABELS = ("not_equivalent", "equivalent")
ENTAILMENT_2 = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One built-in task, before its naming variants.

  Attributes:
    name: the task name without variant prefix/suffix, e.g. `glue_sst2_v200`.
    collection: "super_glue", "glue" or "transfer" (which mixture it belongs to).
    source: where the raw examples come from.
    formatter: a preprocessor that still needs `prefix=` (see `preprocessors.py`).
    prefix: the text T5 puts first in the input (the benchmark name, or "wsc:").
    task_index: which `<extra_id_K>` names the task in the `task_index_` variant.
    postprocess_fn: decoded text -> the value the metrics compare.
    metric_fns: seqio metric functions.
    class_labels: the label texts of a classification task, else None.
    trainable: whether the task has a train split and belongs in its collection's mixture.
  """

  name: str
  collection: str
  source: seqio.DataSource
  formatter: Callable[..., Any]
  prefix: str
  task_index: int
  postprocess_fn: Callable[..., Any]
  metric_fns: Sequence[Callable[..., Any]]
  class_labels: tuple[str, ...] | None = None
  trainable: bool = True


def _classification(
  name: str,
  collection: str,
  tfds_name: str,
  prefix: str,
  task_index: int,
  labels: tuple[str, ...],
  metric_fns: Sequence[Callable[..., Any]],
  feature_names: Sequence[str] | None = None,
  source: seqio.DataSource | None = None,
  trainable: bool = True,
) -> Benchmark:
  """A task in T5's general `glue` format whose target is the label name (`feature_names` fixes the key order)."""
  return Benchmark(
    name=name,
    collection=collection,
    source=source or TfdsSource.from_tfds_name(tfds_name),
    formatter=functools.partial(preprocessors.format_glue, label_names=labels, feature_names=feature_names),
    prefix=prefix,
    task_index=task_index,
    postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=labels),
    metric_fns=metric_fns,
    class_labels=labels,
    trainable=trainable,
  )


def _super_glue() -> list[Benchmark]:
  acc = [metrics.accuracy]
  sg = lambda config: f"super_glue/{config}:1.0.2"
  wsc_source = TfdsSource.from_tfds_name(sg("wsc.fixed"), split_filters={"train": preprocessors.is_positive_example})
  return [
    _classification("super_glue_boolq_v102", "super_glue", sg("boolq"), "boolq", 0, ("False", "True"), acc),
    _classification(
      "super_glue_cb_v102",
      "super_glue",
      sg("cb"),
      "cb",
      1,
      ("entailment", "contradiction", "neutral"),
      [functools.partial(metrics.mean_multiclass_f1, num_classes=3), metrics.accuracy],
    ),
    _classification("super_glue_copa_v102", "super_glue", sg("copa"), "copa", 2, ("choice1", "choice2"), acc),
    Benchmark(
      name="super_glue_multirc_v102",
      collection="super_glue",
      source=TfdsSource.from_tfds_name(sg("multirc")),
      formatter=preprocessors.format_multirc,
      prefix="multirc",
      task_index=3,
      postprocess_fn=postprocessors.multirc,
      metric_fns=[metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match],
      class_labels=("False", "True"),
    ),
    Benchmark(
      name="super_glue_record_v102",
      collection="super_glue",
      source=TfdsSource.from_tfds_name(sg("record")),
      formatter=preprocessors.format_record,
      prefix="record",
      task_index=4,
      postprocess_fn=postprocessors.record,
      metric_fns=[metrics.record_em_f1],
    ),
    _classification("super_glue_rte_v102", "super_glue", sg("rte"), "rte", 5, ENTAILMENT_2, acc),
    _classification(
      "super_glue_wic_v102",
      "super_glue",
      sg("wic"),
      "wic",
      6,
      ("False", "True"),
      acc,
      feature_names=("sentence1", "sentence2", "word"),
    ),
    Benchmark(
      name="super_glue_wsc_v102",
      collection="super_glue",
      source=wsc_source,
      formatter=preprocessors.format_wsc_simple,
      prefix="wsc:",
      task_index=7,
      postprocess_fn=postprocessors.wsc_simple,
      metric_fns=acc,
    ),
    # The diagnostics have a test split only; T5 casts them as RTE (same prefix, same labels).
    _classification(
      "super_glue_axb_v102",
      "super_glue",
      sg("axb"),
      "rte",
      5,
      ENTAILMENT_2,
      [metrics.matthews_corrcoef],
      trainable=False,
    ),
    _classification("super_glue_axg_v102", "super_glue", sg("axg"), "rte", 5, ENTAILMENT_2, acc, trainable=False),
  ]


def _glue() -> list[Benchmark]:
  acc, f1_acc = [metrics.accuracy], [metrics.f1_with_invalid, metrics.accuracy]
  glue = lambda config: f"glue/{config}:2.0.0"
  mnli_splits = {"train": "train", "validation": "validation_matched"}
  mnli_splits.update({s: s for s in ("validation_matched", "validation_mismatched", "test_matched", "test_mismatched")})
  return [
    _classification(
      "glue_cola_v200", "glue", glue("cola"), "cola", 8, ("unacceptable", "acceptable"), [metrics.matthews_corrcoef]
    ),
    _classification("glue_sst2_v200", "glue", glue("sst2"), "sst2", 9, ("negative", "positive"), acc),
    _classification("glue_mrpc_v200", "glue", glue("mrpc"), "mrpc", 10, ("not_equivalent", "equivalent"), f1_acc),
    _classification("glue_qqp_v200", "glue", glue("qqp"), "qqp", 11, ("not_duplicate", "duplicate"), f1_acc),
    Benchmark(
      name="glue_stsb_v200",
      collection="glue",
      source=TfdsSource.from_tfds_name(glue("stsb")),
      formatter=preprocessors.format_stsb,
      prefix="stsb",
      task_index=12,
      postprocess_fn=postprocessors.string_to_float,
      metric_fns=[metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    ),
    _classification(
      "glue_mnli_v200",
      "glue",
      glue("mnli"),
      "mnli",
      13,
      ("entailment", "neutral", "contradiction"),
      acc,
      source=TfdsSource.from_tfds_name(glue("mnli"), splits=mnli_splits),
    ),
    _classification("glue_qnli_v200", "glue", glue("qnli"), "qnli", 14, ENTAILMENT_2, acc),
    _classification("glue_rte_v200", "glue", glue("rte"), "rte", 15, ENTAILMENT_2, acc),
    _classification("glue_wnli_v200", "glue", glue("wnli"), "wnli", 16, ("not_entailment", "entailment"), acc),
  ]


def _transfer(train_config: str, eval_config: str) -> Benchmark:
  train, evaluate = f"glue/{train_config}:2.0.0", f"glue/{eval_config}:2.0.0"
  source = TfdsSource(
    {
      "train": TfdsSplit(train, "train"),
      "validation": TfdsSplit(evaluate, "validation"),
      "test": TfdsSplit(evaluate, "test"),
    }
  )
  return Benchmark(
    name=f"glue_{train_config}_to_{eval_config}_v200",
    collection="transfer",
    source=source,
    formatter=functools.partial(preprocessors.format_paraphrase, label_names=PARAPHRASE_LABELS),
    prefix="paraphrase",
    task_index=17,
    postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=PARAPHRASE_LABELS),
    metric_fns=[metrics.f1_with_invalid, metrics.accuracy],
    class_labels=PARAPHRASE_LABELS,
  )


# The MRQA 2019 out-of-domain sets (Lester et al. 2021 section 6, Table 2): the reference implementation's names ->
# the tfds `mrqa` configs. tfds publishes them as a `test` split only (MRQA's dev sets); the tasks call it
# `validation`, as the reference's TSV tasks do, so evaluating the SQuAD-to-MRQA mixtures on `validation` scores them.
MRQA_OUT_OF_DOMAIN = {
  "bioasq": "bio_asq",
  "drop": "drop",
  "duorc": "duo_rc",
  "race": "race",
  "relation_extraction": "relation_extraction",
  "textbookqa": "textbook_qa",
}
SQUAD_TASK_INDEX = 18


def mrqa_task_name(name: str) -> str:
  """The reference's name of an MRQA out-of-domain task: `mrqa_textbookqa_v001`."""
  return f"mrqa_{name}_v001"


def _qa() -> list[Benchmark]:
  """SQuAD v1.1 and the MRQA out-of-domain sets, all in SQuAD's format, one task index, scored by SQuAD EM/F1."""
  qa = {"prefix": "", "task_index": SQUAD_TASK_INDEX, "postprocess_fn": postprocessors.qa}
  squad = Benchmark(
    name="squad_v010_allanswers",
    collection="qa",
    source=TfdsSource.from_tfds_name("squad/v1.1:3.0.0"),
    formatter=preprocessors.format_squad,
    metric_fns=[metrics.squad_em_f1],
    **qa,
  )
  mrqa = [
    Benchmark(
      name=mrqa_task_name(name),
      collection="mrqa",
      source=TfdsSource.from_tfds_name(f"mrqa/{config}:1.0.0", splits={"validation": "test"}),
      formatter=preprocessors.format_mrqa,
      metric_fns=[metrics.squad_em_f1],
      trainable=False,
      **qa,
    )
    for name, config in MRQA_OUT_OF_DOMAIN.items()
  ]
  return [squad, *mrqa]


def _generation() -> list[Benchmark]:
  """Li & Liang's tasks (their section 5): XSum (ROUGE) and table-to-text E2E, WebNLG, DART (BLEU).

  Versions differ from the paper's where tfds has another one: E2E is tfds `e2e_cleaned` (Dusek et al. 2019's
  cleaned E2E; the paper used the original E2E), WebNLG is tfds `web_nlg` (the WebNLG challenge 2017 release the
  paper used; its test split is `test_all`, seen + unseen categories), DART is tfds `dart` (v1.1.1, as in the
  paper), XSum is tfds `xsum` 1.1.0 (tfds needs the articles downloaded by hand: its MANUAL_DOWNLOAD_INSTRUCTIONS).
  """
  text = {"postprocess_fn": postprocessors.grouped_reference, "metric_fns": [metrics.bleu], "collection": "generation"}
  to_text = functools.partial(preprocessors.format_table_to_text, triples=False)
  triples = functools.partial(preprocessors.format_table_to_text, triples=True)
  splits = {"train": "train", "validation": "validation", "test": "test"}
  web_nlg_splits = {**splits, "test": "test_all"}
  return [
    Benchmark(
      name="xsum_v110",
      collection="generation",
      source=TfdsSource.from_tfds_name("xsum:1.1.0", splits=splits),
      formatter=preprocessors.format_summarization,
      prefix="summarize:",
      task_index=19,
      postprocess_fn=postprocessors.identity_text,
      metric_fns=[metrics.rouge],
    ),
    Benchmark(
      name="e2e_cleaned_v010",
      source=TfdsSource.from_tfds_name("e2e_cleaned:0.1.0", splits=splits),
      formatter=to_text,
      prefix="e2e:",
      task_index=20,
      **text,
    ),
    Benchmark(
      name="web_nlg_v010",
      source=TfdsSource.from_tfds_name("web_nlg:0.1.0", splits=web_nlg_splits),
      formatter=triples,
      prefix="webnlg:",
      task_index=21,
      **text,
    ),
    Benchmark(
      name="dart_v010",
      source=TfdsSource.from_tfds_name("dart:0.1.0", splits=splits),
      formatter=triples,
      prefix="dart:",
      task_index=22,
      **text,
    ),
  ]


@functools.cache
def all_benchmarks() -> tuple[Benchmark, ...]:
  """Every built-in task: SuperGLUE, GLUE, the transfer pairs, then QA (SQuAD, MRQA) and generation."""
  transfer = [_transfer("qqp", "mrpc"), _transfer("mrpc", "qqp")]
  return tuple(_super_glue() + _glue() + transfer + _qa() + _generation())
