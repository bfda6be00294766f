"""Postprocessors: decoded model text (or target text) -> the values the metrics compare.

seqio calls a task's postprocessor as `fn(text, example=..., is_target=...)` once per target and once per prediction,
where `example` is the preprocessed example (numpy values; strings as bytes). None of these ever raise on what a model
writes: text that is not a valid label becomes -1 (classification) or -1.0 (STS-B), which the metrics count as wrong.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

INVALID_LABEL = -1
INVALID_SCORE = -1.0

_WSC_DETERMINERS = frozenset(
  "a an few her his each every many much my our some that the their these this those which whose your".split()
)


def as_text(value: Any) -> str:
  """Returns `value` as str, decoding bytes as UTF-8 (numpy/TF strings come back as bytes)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value)


def string_label_to_class_id(
  text: Any, label_classes: Sequence[str], example: Mapping | None = None, is_target: bool = False
) -> int:
  """Returns the index of `text` in `label_classes`, or -1 when it is not one of them."""
  del example, is_target  # Same mapping for targets and predictions.
  text = as_text(text).strip()
  return label_classes.index(text) if text in label_classes else INVALID_LABEL


def string_to_float(text: Any, example: Mapping | None = None, is_target: bool = False) -> float:
  """Returns `text` as a float (STS-B scores), or -1.0 when it is not a number."""
  del example, is_target
  try:
    return float(as_text(text).strip())
  except ValueError:
    return INVALID_SCORE


def multirc(text: Any, example: Mapping | None = None, is_target: bool = False) -> dict:
  """MultiRC: the answer's True/False as 1/0 (-1 invalid); targets also carry their question as `group`."""
  result = {"value": string_label_to_class_id(text, ("False", "True"))}
  if is_target:
    # Question indices are only unique within their paragraph.
    result["group"] = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return result


def record(text: Any, example: Mapping | None = None, is_target: bool = False) -> Any:
  """ReCoRD: predictions stay text; targets become `{"group": query, "answers": [all gold answers]}`."""
  if not is_target:
    return as_text(text)
  return {
    "group": (int(example["idx/passage"]), int(example["idx/query"])),
    "answers": [as_text(a) for a in example["answers"]],
  }


def _wsc_clean(text: str) -> str:
  """Lower-cases and drops determiners, so that "the bunny" and "Bunny" compare equal."""
  return " ".join(w for w in text.strip().lower().split(" ") if w not in _WSC_DETERMINERS)


def wsc_simple(text: Any, example: Mapping | None = None, is_target: bool = False) -> int:
  """WSC (T5's `wsc_simple`): 1 if the prediction names the candidate referent (the target text), else 0.

  Targets are the example's 0/1 label, so accuracy measures whether the model names the candidate exactly when it is
  the right referent. An empty prediction is -1 (never matches). Word-set containment either way counts as naming the
  candidate ("fuzzy bunny" vs "bunny"), unless only one of the two is possessive ("Bob" vs "Bob's hat").
  """
  if is_target:
    return int(example["label"])
  prediction = _wsc_clean(as_text(text))
  if not prediction:
    return INVALID_LABEL
  referent = _wsc_clean(as_text(example["targets_pretokenized"]))
  if ("'" in prediction) != ("'" in referent):
    return 0
  prediction_words, referent_words = set(prediction.split(" ")), set(referent.split(" "))
  return int(prediction_words <= referent_words or referent_words <= prediction_words)


def identity_text(text: Any, example: Mapping | None = None, is_target: bool = False) -> str:
  """Returns the text unchanged (as str), for tasks scored by exact match."""
  del example, is_target
  return as_text(text)


def qa(text: Any, example: Mapping | None = None, is_target: bool = False) -> Any:
  """SQuAD/MRQA: predictions stay text; targets become the list of every gold answer (SQuAD's metric takes the max)."""
  if not is_target:
    return as_text(text)
  return [as_text(a) for a in example["answers"]]


def grouped_reference(text: Any, example: Mapping | None = None, is_target: bool = False) -> Any:
  """Data-to-text: predictions stay text; targets become `{"group": input text, "reference": target text}`.

  tfds gives each reference of a table its own example; the group lets the metric score one prediction per table
  against all of its references, as the E2E, WebNLG and DART evaluation scripts do.
  """
  if not is_target:
    return as_text(text)
  return {"group": as_text(example["inputs_pretokenized"]), "reference": as_text(text)}


def with_examples(postprocess_fn: Callable[..., Any]) -> Callable[..., dict]:
  """Wraps a postprocessor so that its values also carry the texts shown by `metrics.text_examples`.

  The wrapped postprocessor returns `{"value": postprocess_fn(...), "text": decoded text}`, and for targets also
  `"inputs"`: the example's input text. `metrics.on_values` unwraps `value` for the ordinary metrics.
  """

  def postprocess(text: Any, example: Mapping | None = None, is_target: bool = False) -> dict:
    result = {"value": postprocess_fn(text, example=example, is_target=is_target), "text": as_text(text)}
    if is_target and example is not None:
      result["inputs"] = as_text(example.get("inputs_pretokenized", ""))
    return result

  postprocess.__name__ = f"with_examples({function_name(postprocess_fn)})"
  return postprocess


def function_name(fn: Callable) -> str:
  """Returns a readable name of a function or `functools.partial` (for logs and `tasks show`)."""
  if isinstance(fn, functools.partial):
    return function_name(fn.func)
  return getattr(fn, "__name__", type(fn).__name__)
