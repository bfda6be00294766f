"""`prompt-tuning tasks list|show`: what tasks exist, and what their examples look like after preprocessing.

  prompt-tuning tasks list [PATTERN]
      Every registered task and mixture name; PATTERN is a substring or a glob (`'*boolq*'`).
  prompt-tuning tasks show NAME [--split validation] [--num 3] [--vocab PATH] [--tfds_data_dir DIR]
                           [--gin_file FILE ...] [--gin BINDING ...]
      How a task is read and scored, then its first NUM examples: input and target text and token ids. For a
      mixture, its tasks and mixing rates. `--gin_file`/`--gin` are parsed first, so a local task configured in gin
      (`MIXTURE_OR_TASK_NAME = @prompt_tuning.data.register_local_task()`) can be shown; NAME then defaults to it.

The top-level `prompt-tuning` command dispatches `tasks ...` to `main`.
"""

import argparse
import fnmatch
import sys
from collections.abc import Sequence

import gin
import numpy as np
import seqio

from prompt_tuning import gin_config
from prompt_tuning.data import registry, sources, vocab
from prompt_tuning.data.class_labels import get_class_labels
from prompt_tuning.data.errors import DataConfigError
from prompt_tuning.data.postprocessors import as_text, function_name

TASK_NAME_MACRO = "MIXTURE_OR_TASK_NAME"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="prompt-tuning tasks", description="List and inspect registered tasks.")
  commands = parser.add_subparsers(dest="command", required=True)
  list_parser = commands.add_parser("list", help="list task and mixture names")
  list_parser.add_argument("pattern", nargs="?", default=None, help="substring or glob to filter names")
  show = commands.add_parser("show", help="show a task's preprocessed examples")
  show.add_argument("name", nargs="?", default=None, help=f"task or mixture name (default: gin's {TASK_NAME_MACRO})")
  show.add_argument("--split", default="validation", help="split to read (default: validation)")
  show.add_argument("--num", type=int, default=3, help="number of examples (default: 3)")
  show.add_argument("--vocab", default=None, help="SentencePiece model (default: gin / $PROMPT_TUNING_VOCAB)")
  show.add_argument("--tfds_data_dir", default=None, help="tensorflow-datasets data directory")
  show.add_argument("--gin_file", action="append", default=[], help="gin file to parse first (repeatable)")
  show.add_argument("--gin", action="append", default=[], help="gin binding to parse first (repeatable)")
  return parser


def list_names(pattern: str | None) -> list[str]:
  """Registered task and mixture names matching `pattern` (a glob if it has wildcards, else a substring)."""
  names = registry.all_names()
  if not pattern:
    return names
  if any(c in pattern for c in "*?["):
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
  return [n for n in names if pattern in n]


def _gin_task_name(bindings: Sequence[str], gin_files: Sequence[str]) -> str | None:
  """Parses the gin files/bindings; returns the evaluated MIXTURE_OR_TASK_NAME macro (registering local tasks)."""
  if not bindings and not gin_files:
    return None
  # Through the command line's parser: gin/defaults.gin first (the macros local_files.gin reads), the search paths.
  gin_config.configure_gin(list(gin_files), list(bindings), [])
  try:
    value = gin.query_parameter(f"{TASK_NAME_MACRO}/gin.macro.value")
  except ValueError:
    return None  # Not bound.
  if getattr(value, "scoped_selector", None) == "gin.REQUIRED/gin.constant":
    return None  # Only defaults.gin's %gin.REQUIRED.
  # Evaluating the macro through a configurable calls any @register_local_task() it references.
  scope = "prompt_tuning_tasks_cli"
  gin.parse_config(f"{scope}/prompt_tuning.data.cli.gin_macro_value.value = %{TASK_NAME_MACRO}")
  with gin.config_scope(scope):
    return gin_macro_value()


@gin.configurable(module="prompt_tuning.data.cli")
def gin_macro_value(value=None):
  """Returns `value` as gin evaluated it (the tasks CLI binds a macro to it)."""
  return value


def _describe_task(task: seqio.Task) -> list[str]:
  labels = get_class_labels(task.name)
  return [
    f"task: {task.name}",
    f"source: {task.source!r}",
    f"splits: {', '.join(task.splits)}",
    f"class labels: {', '.join(labels) if labels else '(none)'}",
    f"postprocessor: {function_name(task.postprocessor) if task.postprocessor else '(none)'}",
    f"metrics: {', '.join(function_name(fn) for fn in task.metric_fns) or '(none)'}",
  ]


def _describe_mixture(mixture: seqio.Mixture) -> list[str]:
  lines = [f"mixture: {mixture.name}", f"tasks ({len(mixture.tasks)}), with mixing rates:"]
  for task in mixture.tasks:
    try:
      rate = mixture.get_rate(task)
    except Exception as e:  # noqa: BLE001 - a rate that needs unavailable metadata should not hide the rest.
      rate = f"unknown ({e})"
    lines.append(f"  {task.name}: {rate}")
  return lines


def _example_lines(task: seqio.Task, split: str, num: int) -> list[str]:
  if split not in task.splits:
    raise DataConfigError(f"task {task.name!r} has no split {split!r}; its splits are {', '.join(task.splits)}")
  vocab.get_vocabulary()  # A clear error now if none is configured, rather than deep inside the pipeline.
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  lines = []
  for i, example in enumerate(dataset.take(num).as_numpy_iterator()):
    lines.append(f"--- example {i} ({split})")
    for feature in ("inputs", "targets"):
      lines.append(f"{feature}: {as_text(example[f'{feature}_pretokenized'])}")
      lines.append(f"{feature} ids: {np.asarray(example[feature]).tolist()}")
  return lines


def _show(args: argparse.Namespace) -> list[str]:
  name = _gin_task_name(args.gin, args.gin_file)
  name = args.name or name
  if not name:
    raise DataConfigError(f"give a task name, or gin files/bindings that bind {TASK_NAME_MACRO}")
  provider = registry.get_task_or_mixture(name)
  if isinstance(provider, seqio.Mixture):
    return _describe_mixture(provider)
  return _describe_task(provider) + _example_lines(provider, args.split, args.num)


def main(argv: Sequence[str]) -> int:
  """Runs `tasks list|show ...` (argv without the leading `tasks`); returns the process exit status."""
  args = _parser().parse_args(list(argv))
  previous_vocab, previous_data_dir = vocab.vocabulary_path_override(), sources.tfds_data_dir_override()
  try:
    if getattr(args, "vocab", None):
      vocab.set_vocabulary_path(args.vocab)
    if getattr(args, "tfds_data_dir", None):
      sources.set_tfds_data_dir(args.tfds_data_dir)
    lines = list_names(args.pattern) if args.command == "list" else _show(args)
    if not lines:
      print(f"no task or mixture name matches {args.pattern!r}", file=sys.stderr)
      return 1
  except (DataConfigError, FileNotFoundError) as e:
    # Gin appends "In call to configurable ..." lines; the first line is the message meant for the user.
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  finally:
    vocab.set_vocabulary_path(previous_vocab)
    sources.set_tfds_data_dir(previous_data_dir)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
