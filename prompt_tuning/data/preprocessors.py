"""Text-to-text formatting of GLUE and SuperGLUE examples, as T5 formats them.

Every formatter maps raw tfds examples to `{"inputs": str, "targets": str, ...}` and takes a `prefix`: the text put
first in the input. T5's own tasks use the benchmark name (`"sst2"`, `"wsc:"`); the `taskless_` task variants use no
prefix; the `task_index_` variants use a sentinel naming the task (`"<extra_id_3>"`). For example, one SST-2 record:

  glue_sst2_v200:             "sst2 sentence: it 's a charming journey ."      -> "positive"
  taskless_glue_sst2_v200:    "sentence: it 's a charming journey ."           -> "positive"
  task_index_glue_sst2_v200:  "<extra_id_9> sentence: it 's a charming journey ." -> "positive"

The general format (`format_glue`) is T5's `glue` preprocessor: `prefix key1: value1 key2: value2 ...` with the keys in
sorted order unless a task fixes them (MultiRC, WiC), `idx` and `label` left out of the text, and the target the name
of the label class (`"<unk>"` for the unlabeled test splits).
"""

from collections.abc import Sequence

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
NO_LABEL = "<unk>"
_NOT_TEXT = ("idx", "label")


def join_text(prefix: str | None, parts: Sequence) -> tf.Tensor:
  """Joins `prefix` (if any) and `parts` (strings or string tensors) with single spaces."""
  return tf.strings.join(([prefix] if prefix else []) + list(parts), separator=" ")


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """Returns the class name of integer `label`, or `"<unk>"` for -1 (unlabeled)."""
  names = tf.constant(list(label_names))
  return tf.cond(tf.equal(label, -1), lambda: tf.constant(NO_LABEL), lambda: tf.gather(names, label))


def key_value_parts(example: dict, feature_names: Sequence[str] | None = None) -> list:
  """Returns `["key1:", value1, "key2:", value2, ...]`, keys sorted unless `feature_names` fixes them."""
  keys = feature_names or sorted(k for k in example if k not in _NOT_TEXT)
  parts = []
  for key in keys:
    parts += [f"{key}:", example[key]]
  return parts


@seqio.map_over_dataset
def format_glue(
  x: dict,
  prefix: str | None,
  label_names: Sequence[str],
  feature_names: Sequence[str] | None = None,
) -> dict:
  """T5's GLUE/SuperGLUE format for classification tasks (see the module docstring)."""
  return {
    "inputs": join_text(prefix, key_value_parts(x, feature_names)),
    "targets": label_text(x["label"], label_names),
    "idx": x["idx"],
  }


@seqio.map_over_dataset
def format_multirc(x: dict, prefix: str | None) -> dict:
  """MultiRC as T5: `multirc question: .. answer: .. paragraph: ..`, HTML markup removed, indices kept."""
  text = join_text(prefix, key_value_parts(x, ("question", "answer", "paragraph")))
  text = tf.strings.regex_replace(text, "<br>", " ")
  text = tf.strings.regex_replace(text, "<(/)?b>", "")
  return {
    "inputs": text,
    "targets": label_text(x["label"], ("False", "True")),
    "idx/paragraph": x["idx"]["paragraph"],
    "idx/question": x["idx"]["question"],
    "idx/answer": x["idx"]["answer"],
  }


@seqio.map_over_dataset
def format_stsb(x: dict, prefix: str | None) -> dict:
  """STS-B as T5: the similarity score rounded to the nearest 0.2, written with one decimal ("3.8")."""
  score = tf.as_string(tf.round(x["label"] * 5) / 5, precision=1)
  return {
    "inputs": join_text(prefix, key_value_parts(x, ("sentence1", "sentence2"))),
    "targets": score,
    "idx": x["idx"],
  }


@seqio.map_over_dataset
def format_paraphrase(x: dict, prefix: str | None, label_names: Sequence[str]) -> dict:
  """QQP or MRPC in one shared format, `sentence1: .. sentence2: ..` (QQP's question1/question2 renamed)."""
  first = x["question1"] if "question1" in x else x["sentence1"]
  second = x["question2"] if "question2" in x else x["sentence2"]
  return {
    "inputs": join_text(prefix, ["sentence1:", first, "sentence2:", second]),
    "targets": label_text(x["label"], label_names),
    "idx": x["idx"],
  }


def _one_example_per_answer(x: dict) -> dict:
  """Repeats a ReCoRD example once per gold answer, each answer the target of one copy."""
  num_answers = tf.size(x["answers"])
  copies = tf.maximum(num_answers, 1)

  def repeat(t):
    return tf.broadcast_to(t, tf.concat([[copies], tf.shape(t)], axis=0))

  out = {k: repeat(v) for k, v in x.items() if k != "idx"}
  out["idx"] = {k: repeat(v) for k, v in x["idx"].items()}
  out["targets"] = tf.cond(num_answers > 0, lambda: x["answers"], lambda: tf.constant([NO_LABEL]))
  return out


def _format_record_text(x: dict, prefix: str | None) -> dict:
  passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
  entities = tf.strings.reduce_join(x["entities"], separator=", ")
  return {
    "inputs": join_text(prefix, ["query:", x["query"], "entities:", entities, "passage:", passage]),
    "targets": x["targets"],
    "answers": x["answers"],
    "idx/passage": x["idx"]["passage"],
    "idx/query": x["idx"]["query"],
  }


def format_record(dataset: tf.data.Dataset, prefix: str | None) -> tf.data.Dataset:
  """ReCoRD as T5: one example per gold answer, `record query: .. entities: e1, e2 passage: ..`.

  Every copy keeps the full `answers` list and the `idx/passage`, `idx/query` indices, which the metric uses to score
  each query once against all of its answers.
  """
  dataset = dataset.map(_one_example_per_answer, num_parallel_calls=AUTOTUNE).unbatch()
  return dataset.map(lambda x: _format_record_text(x, prefix), num_parallel_calls=AUTOTUNE)


def _mark_pronoun(text: tf.Tensor, pronoun: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """Puts asterisks around the pronoun: at word `index` if that word starts with it, else at its nearest occurrence.

  T5 asserts that word `index` is the pronoun and special-cases the two WSC texts where it is not; this finds the
  word instead, and leaves the text unmarked (rather than failing) when the pronoun does not occur at all.
  """
  words = tf.strings.split(text, sep=" ")
  positions = tf.range(tf.size(words))
  pronoun_length = tf.strings.length(pronoun)
  starts_with = tf.equal(tf.strings.substr(words, 0, pronoun_length), pronoun)
  exact = tf.equal(words, pronoun)
  candidates = (starts_with & tf.equal(positions, tf.cast(index, tf.int32))) | exact
  found = tf.reduce_any(candidates)

  def mark():
    distance = tf.where(candidates, tf.abs(positions - tf.cast(index, tf.int32)), tf.int32.max)
    position = tf.argmin(distance, output_type=tf.int32)
    rest = tf.strings.substr(words[position], pronoun_length, -1)
    marked = tf.strings.join(["*", pronoun, "*", rest])
    return tf.strings.reduce_join(tf.tensor_scatter_nd_update(words, [[position]], [marked]), separator=" ")

  return tf.cond(found, mark, lambda: text)


@seqio.map_over_dataset
def format_wsc_simple(x: dict, prefix: str | None) -> dict:
  """WSC as T5's `wsc_simple`: the text with the pronoun in asterisks; the target is the candidate referent.

  `wsc: Mitchell asked Tom if *he* could lend some money.` -> `Tom`. The target is the candidate (span1) whether or
  not it is the right referent: the source keeps only positive examples for training, and the postprocessor scores
  a prediction by whether it names the candidate, compared with the 0/1 `label`.
  """
  text = _mark_pronoun(x["text"], x["span2_text"], x["span2_index"])
  return {"inputs": join_text(prefix, [text]), "targets": x["span1_text"], "label": x["label"], "idx": x["idx"]}


def is_positive_example(x: dict) -> tf.Tensor:
  """True where the raw example's label is 1 (used to train WSC on correct referents only)."""
  return tf.equal(x["label"], 1)


# ---------------------------------------------------------------------------------------------------------------------
# Question answering and generation (Lester et al. 2021 section 6; Li & Liang 2021 sections 5-6).


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """Spaces around every character that is not a letter, digit, mark or underscore, collapsed (T5's SQuAD format).

  `"Paris, France."` -> `"Paris , France ."`. T5 formats SQuAD this way, and the reference implementation's
  `squad_v010_allanswers` tasks read T5's format; SQuAD's metric normalizes punctuation away, so scores are unchanged.
  """
  text = tf.strings.regex_replace(text, r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def _question_answer(question: tf.Tensor, context: tf.Tensor, answers: tf.Tensor, prefix: str | None) -> dict:
  """`question: .. context: ..` -> the first gold answer; every gold answer kept in `answers` for the metric."""
  answers = pad_punctuation(answers)
  first = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(NO_LABEL))
  return {
    "inputs": join_text(prefix, ["question:", pad_punctuation(question), "context:", pad_punctuation(context)]),
    "targets": first,
    "answers": answers,
  }


@seqio.map_over_dataset
def format_squad(x: dict, prefix: str | None) -> dict:
  """SQuAD (tfds `squad/v1.1`) as T5: `question: .. context: ..` -> the first answer, all answers kept."""
  return {**_question_answer(x["question"], x["context"], x["answers"]["text"], prefix), "id": x["id"]}


@seqio.map_over_dataset
def format_mrqa(x: dict, prefix: str | None) -> dict:
  """An MRQA 2019 set (tfds `mrqa/<name>`) in SQuAD's format, so a SQuAD prompt reads it unchanged."""
  return {**_question_answer(x["question"], x["context"], x["answers"], prefix), "id": x["qid"]}


@seqio.map_over_dataset
def format_summarization(x: dict, prefix: str | None, document: str = "document", summary: str = "summary") -> dict:
  """A summarization example as T5 writes it: `summarize: <document>` -> the summary."""
  return {"inputs": join_text(prefix, [x[document]]), "targets": x[summary]}


def linearize_table(table: dict, triples: bool) -> tf.Tensor:
  """A tfds structured-to-text table as one line, Li & Liang's linearization (their section 5.1).

  Attribute tables (E2E: one row per attribute) become `name : The Eagle | food : French`; triple tables (WebNLG,
  DART: three cells per row, subject/predicate/object) become `Alan Bean : occupation : Test pilot | ...`.
  """
  if triples:
    # The cells of one triple share a row number; rows are kept in the order they first appear.
    numbers, row_of_cell = tf.unique(table["row_number"])
    rows = tf.strings.unsorted_segment_join(table["content"], row_of_cell, tf.size(numbers), separator=" : ")
  else:
    rows = tf.strings.join([table["column_header"], table["content"]], separator=" : ")
  return tf.strings.reduce_join(rows, separator=" | ")


@seqio.map_over_dataset
def format_table_to_text(x: dict, prefix: str | None, triples: bool) -> dict:
  """E2E, WebNLG or DART (tfds `e2e_cleaned`, `web_nlg`, `dart`): the linearized table -> one reference text.

  Each reference is its own example in tfds; the metric groups references by their input again (`metrics.bleu`).
  """
  return {
    "inputs": join_text(prefix, [linearize_table(x["input_text"]["table"], triples)]),
    "targets": x["target_text"],
  }
