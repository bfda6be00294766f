"""Tasks from users' own JSONL or TSV files, configured entirely from gin.

  MIXTURE_OR_TASK_NAME = @prompt_tuning.data.register_local_task()
  prompt_tuning.data.register_local_task:
    name = "my_qa"
    train = "/data/my_qa/train.jsonl"
    validation = "/data/my_qa/dev.jsonl"
    input_template = "question: {question} passage: {passage}"
    target_column = "answer"
    class_labels = ["no", "yes"]   # optional: scored by accuracy; without it, by exact match of the text

The reference is evaluated wherever the name is needed and returns the task name; registering the same configuration
again does nothing, so every use of `%MIXTURE_OR_TASK_NAME` may evaluate it. For several local tasks in one config,
use gin scopes: `@qa/prompt_tuning.data.register_local_task()` with `qa/prompt_tuning.data.register_local_task.name =
...`.

Files:
- JSONL (`.jsonl`, `.json`): one JSON object per line; values that are not strings are written as JSON would
  (`true` -> "true", `3` -> "3"), `null` as "".
- TSV (`.tsv`): a header row naming the columns, then one example per line, tab-separated, no quoting.
The input is either one column (`input_column`) or `input_template` filled with column values. The test file alone
may leave out the target column (unlabeled), giving empty targets.

Every file is read once at registration to check it: a missing file, a missing column, a malformed line, or a target
that is not one of `class_labels` raises `LocalDataError` naming the file and line, before any training starts.
"""

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import string
from collections.abc import Callable, Iterator, Sequence

import gin
import seqio
import tensorflow as tf

from prompt_tuning.data import class_labels as class_labels_lib
from prompt_tuning.data import metrics, postprocessors
from prompt_tuning.data.errors import LocalDataError
from prompt_tuning.data.registry import standard_preprocessors
from prompt_tuning.data.vocab import output_features

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}
_TASK_NAME = re.compile(r"^[\w\d\.\:_]+$")  # What seqio accepts.
_configs: dict[str, "LocalTaskConfig"] = {}
_train_digests: dict[str, dict[str, str]] = {}  # task name -> {"path", "sha256"} of its train file


@dataclasses.dataclass(frozen=True)
class LocalTaskConfig:
  """Everything that defines a local task (two registrations with equal configs are the same task)."""

  name: str
  files: tuple[tuple[str, str], ...]  # (split, path)
  file_format: str
  input_template: str
  target_column: str
  class_labels: tuple[str, ...] | None

  @property
  def input_columns(self) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(self.input_template) if field is not None]


def _as_text(value) -> str:
  if value is None:
    return ""
  return value if isinstance(value, str) else json.dumps(value)


def _open(path: str) -> io.TextIOBase:
  return tf.io.gfile.GFile(path, "r")


def read_rows(path: str, file_format: str) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields `(line number, {column: text})` for each example of a JSONL or TSV file.

  Raises:
    LocalDataError: a line that is not a JSON object, or a TSV row whose field count differs from the header's.
  """
  last_line = 0
  try:
    with _open(path) as f:
      rows = _jsonl_rows(path, f) if file_format == "jsonl" else _tsv_rows(path, f)
      for last_line, row in rows:
        yield last_line, row
  except UnicodeDecodeError as e:
    raise LocalDataError(
      f"{path}, after line {last_line}: not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} {e.reason}); "
      "save the file as UTF-8"
    ) from None


def _jsonl_rows(path: str, f) -> Iterator[tuple[int, dict[str, str]]]:
  for line_number, line in enumerate(f, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise LocalDataError(f"{path}, line {line_number}: not valid JSON ({e.msg}); expected one object per line") from e
    if not isinstance(row, dict):
      raise LocalDataError(f"{path}, line {line_number}: expected a JSON object, got {type(row).__name__}")
    yield line_number, {key: _as_text(value) for key, value in row.items()}


def _tsv_rows(path: str, f) -> Iterator[tuple[int, dict[str, str]]]:
  reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
  header = next(reader, None)
  if not header:
    raise LocalDataError(f"{path}: empty file; a TSV file starts with a header row naming its columns")
  for line_number, fields in enumerate(reader, start=2):
    if not fields:
      continue
    if len(fields) != len(header):
      raise LocalDataError(
        f"{path}, line {line_number}: {len(fields)} tab-separated fields, but the header has {len(header)} "
        f"({', '.join(header)})"
      )
    yield line_number, dict(zip(header, fields))


def _format_example(config: LocalTaskConfig, row: dict[str, str]) -> dict[str, str]:
  return {"inputs": config.input_template.format_map(row), "targets": row.get(config.target_column, "")}


def _check_row(config: LocalTaskConfig, split: str, path: str, line_number: int, row: dict[str, str]) -> None:
  needed = config.input_columns + ([] if split == "test" else [config.target_column])
  missing = [c for c in needed if c not in row]
  if missing:
    raise LocalDataError(
      f"{path}, line {line_number}: no column {', '.join(map(repr, missing))} (the task needs "
      f"{', '.join(map(repr, needed))}; this row has {', '.join(map(repr, row))}); fix the file or the task's "
      "input_template / input_column / target_column"
    )
  target = row.get(config.target_column, "")
  if config.class_labels and target not in config.class_labels and (target or split != "test"):
    raise LocalDataError(
      f"{path}, line {line_number}: target {target!r} is not one of the declared class_labels "
      f"{list(config.class_labels)}; fix the data or add the label to class_labels"
    )


def _count_and_check(config: LocalTaskConfig, split: str, path: str) -> int:
  """Reads a whole file, checking every row; returns the number of examples."""
  count = with_target = 0
  for line_number, row in read_rows(path, config.file_format):
    _check_row(config, split, path, line_number, row)
    count += 1
    with_target += bool(row.get(config.target_column, "").strip())
  if count == 0:
    raise LocalDataError(f"{path}: no examples in the {split} file")
  if split != "test" and with_target == 0:
    raise LocalDataError(
      f"{path}: every target (column {config.target_column!r}) of the {split} file is empty: there is nothing to "
      "learn or score; check target_column (TARGET_COLUMN) or the file"
    )
  return count


def _dataset_fn(config: LocalTaskConfig) -> Callable[..., tf.data.Dataset]:
  """Returns the seqio `dataset_fn(split, shuffle_files, seed)` streaming formatted examples from the files."""
  paths = dict(config.files)

  def load(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # One file per split; seqio shuffles examples.

    def generate():
      for _, row in read_rows(paths[split], config.file_format):
        yield _format_example(config, row)

    spec = {"inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=spec)

  return load


def _file_format(paths: Sequence[str], file_format: str | None) -> str:
  if file_format is not None:
    if file_format not in ("jsonl", "tsv"):
      raise LocalDataError(f"file_format {file_format!r} is not supported; use 'jsonl' or 'tsv'")
    return file_format
  formats = {FORMATS.get(os.path.splitext(p)[1].lower()) for p in paths}
  if None in formats or len(formats) != 1:
    raise LocalDataError(
      f"cannot tell the file format of {', '.join(paths)} from the extensions (.jsonl, .json, .tsv); "
      "set file_format='jsonl' or 'tsv'"
    )
  return formats.pop()


def _make_config(
  name: str,
  files: list[tuple[str, str]],
  input_template: str | None,
  input_column: str | None,
  target_column: str,
  class_labels: Sequence[str] | None,
  file_format: str | None,
) -> LocalTaskConfig:
  """Checks the arguments of `register_local_task` (not yet the file contents) and returns the task's config."""
  if not _TASK_NAME.match(name or ""):
    raise LocalDataError(f"task name {name!r} must be letters, digits, '_', '.' or ':' (e.g. 'my_qa_task')")
  if not files:
    raise LocalDataError(f"local task {name!r} has no files; give at least one of train=, validation=, test=")
  if (input_template is None) == (input_column is None):
    raise LocalDataError(
      f"local task {name!r}: give exactly one of input_column='text' or input_template='question: {{question}}'"
    )
  template = input_template if input_template is not None else "{" + input_column + "}"
  bad_fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None and not f.isidentifier()]
  if bad_fields:
    raise LocalDataError(f"input_template {template!r}: fields must be column names in braces, got {bad_fields}")
  paths = [path for _, path in files]
  for split, path in files:
    if not tf.io.gfile.exists(path):
      raise LocalDataError(f"local task {name!r}: the {split} file {path!r} does not exist")
  return LocalTaskConfig(
    name=name,
    files=tuple(files),
    file_format=_file_format(paths, file_format),
    input_template=template,
    target_column=target_column,
    class_labels=tuple(class_labels) if class_labels else None,
  )


def _register(config: LocalTaskConfig) -> None:
  sizes = {split: _count_and_check(config, split, path) for split, path in config.files}
  if config.class_labels:
    postprocess_fn = functools.partial(postprocessors.string_label_to_class_id, label_classes=config.class_labels)
    metric_fns = [metrics.accuracy]
  else:
    postprocess_fn, metric_fns = postprocessors.identity_text, [metrics.sequence_exact_match]
  source = seqio.FunctionDataSource(_dataset_fn(config), splits=list(sizes), num_input_examples=sizes)
  seqio.TaskRegistry.add(
    config.name,
    source=source,
    output_features=output_features(),
    preprocessors=standard_preprocessors(formatter=None),
    postprocess_fn=postprocess_fn,
    metric_fns=metric_fns,
  )
  class_labels_lib.register_class_labels(config.name, config.class_labels)
  _configs[config.name] = config
  train = dict(config.files).get("train")
  if train is not None:
    _train_digests[config.name] = {"path": train, "sha256": _sha256(train)}
  else:
    _train_digests.pop(config.name, None)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def train_files(name: str) -> dict[str, dict[str, str]]:
  """{local task: {"path", "sha256"} of its train file} for a task or mixture (only its local tasks; {} if none).

  Training records it with its data position, so a resume on another file under the same task name is refused.
  """
  if name in _train_digests:
    return {name: dict(_train_digests[name])}
  if name in seqio.MixtureRegistry.names():
    found = {}
    for task in seqio.get_mixture_or_task(name).tasks:
      found |= train_files(task.name)
    return found
  return {}


@gin.configurable(module="prompt_tuning.data")
def register_local_task(
  name: str,
  train: str | None = None,
  validation: str | None = None,
  test: str | None = None,
  input_template: str | None = None,
  input_column: str | None = None,
  target_column: str = "target",
  class_labels: Sequence[str] | None = None,
  file_format: str | None = None,
) -> str:
  """Registers a seqio task reading local JSONL/TSV files (see the module docstring); returns its name.

  Args:
    name: the task name, used like any built-in task name.
    train: path of the training file (optional, like every split; give at least one).
    validation: path of the validation file.
    test: path of the test file (its target column may be absent).
    input_template: the input text, with `{column}` fields (give this or `input_column`).
    input_column: the column holding the input text.
    target_column: the column holding the target text.
    class_labels: the allowed targets of a classification task; enables accuracy and the class-label prompt
      initializer, and every target must be one of them.
    file_format: "jsonl" or "tsv"; by default from the file extensions.

  Raises:
    LocalDataError: a missing file, a missing column, a bad line, a target outside `class_labels`, or a name already
      used by a task that is not a local task.
  """
  files = [
    (split, os.fspath(path)) for split, path in (("train", train), ("validation", validation), ("test", test)) if path
  ]
  config = _make_config(name, files, input_template, input_column, target_column, class_labels, file_format)
  if _configs.get(name) == config and name in seqio.TaskRegistry.names():
    return name
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    if name not in _configs:
      raise LocalDataError(f"task name {name!r} is already used by a built-in or other registered task; pick another")
    logging.info("Re-registering local task %r with a changed configuration.", name)
    seqio.TaskRegistry.remove(name)
  _register(config)
  return name
