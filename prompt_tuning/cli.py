"""The command line: `prompt-tuning` (and `t5x`, an alias for users' habit).

    prompt-tuning train  --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'" [--gin.NAME=VALUE ...]
    prompt-tuning eval   --gin_file=... (same flags; evaluates the latest checkpoint in MODEL_DIR)
    prompt-tuning infer  --gin_file=... (writes predictions as JSONL)
    prompt-tuning inspect PROMPT --checkpoint BACKBONE [--size NAME] [--vocab SPM] [--k 5]
    prompt-tuning export  PROMPT OUT [--format peft|npy]
    prompt-tuning tasks   list [PATTERN] | show NAME

t5x's flags: `--gin_file` (repeatable), `--gin.NAME=VALUE` (a binding, e.g.
`--gin.MODEL_DIR="'/tmp/run'"` or `--gin.train.num_train_steps=100`),
`--gin_bindings` (repeatable, t5x's older spelling), `--gin_search_paths`
(comma-separated; the project's gin/ and configs/ are always searched), and
`--tfds_data_dir`. A gin file named on the command line is looked up in the
project's library (gin/, configs/) first, then in `--gin_search_paths`, then in
the current folder; write an explicit path (`./my.gin`, `/abs/my.gin`) to use a
file that shares a library file's name. Every resolved path is logged.

Errors print our whole message (what was wrong, and what to do), not a
traceback (`--debug` shows the traceback); TensorFlow's wrapping of errors
raised inside its data pipeline is removed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

GIN_COMMANDS = {
  "train": ("prompt_tuning.train", "train"),
  "eval": ("prompt_tuning.eval", "evaluate"),
  "infer": ("prompt_tuning.infer", "infer"),
}
USAGE = __doc__
log = logging.getLogger(__name__)


def gin_search_paths() -> list[Path]:
  """The project's gin library and ready-to-run configs: in the source tree, or packaged when installed."""
  here = Path(__file__).resolve().parent
  candidates = [
    here.parent / "gin",
    here.parent / "configs",
    here / "gin_files" / "gin",
    here / "gin_files" / "configs",
  ]
  return [p for p in candidates if p.is_dir()]


def _gin_parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"prompt-tuning {command}", add_help=True)
  parser.add_argument(
    "--gin_file", action="append", default=[], help="gin file (repeatable); searched in the gin paths"
  )
  parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding NAME=VALUE (repeatable)")
  parser.add_argument("--gin_search_paths", default="", help="comma-separated extra folders to search for gin files")
  parser.add_argument("--tfds_data_dir", default=None, help="tensorflow-datasets data directory")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks")
  return parser


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` flags (returned as bindings 'NAME=VALUE') from the rest."""
  bindings, rest = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin."):
      name_value = arg[len("--gin.") :]
      if "=" not in name_value:
        if i + 1 >= len(argv):
          raise ValueError(f"flag {arg} has no value; write --gin.NAME=VALUE")
        name_value, i = f"{name_value}={argv[i + 1]}", i + 1
      name, value = name_value.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return bindings, rest


def configure_gin(files: list[str], bindings: list[str], search_paths: list[str]) -> None:
  """Parses gin files and bindings (t5x semantics: files first, then bindings in order).

  Raises:
    FileNotFoundError: a gin file found nowhere.
    ValueError: a gin file that does not parse, naming it.
  """
  import gin

  import prompt_tuning.gin_registry  # noqa: F401  (registers the configurables)

  for path in [*search_paths, *map(str, gin_search_paths())]:
    if path:
      gin.add_config_file_search_path(path)
  for name in files:
    path = resolve_gin_file(name, search_paths)
    log.info("gin file %s: %s", name, path)
    try:
      parsed = gin.parse_config_file(path)
    except (SyntaxError, ValueError, KeyError, ImportError, OSError) as e:
      raise ValueError(f"gin file {path}: {_gin_error(e)}\nFix the file (bindings are NAME = VALUE).") from e
    except Exception as e:  # noqa: BLE001 - tokenize.TokenError and the like name no file
      raise ValueError(f"gin file {path}: {type(e).__name__}: {e}\nFix the file's syntax.") from e
    _log_includes(parsed.includes, search_paths)
  gin.parse_config(bindings)


def _log_includes(includes, search_paths: list[str]) -> None:
  """Logs where each (nested) include was read from, as gin resolves it: the current folder first, then the search
  paths; an include the current folder shadows is warned about."""
  library = [*[p for p in search_paths if p], *map(str, gin_search_paths())]
  for parsed in includes:
    name = parsed.filename
    found = [os.path.join(p, name) for p in ["", *library] if os.path.isfile(os.path.join(p, name))]
    if found:
      log.info("gin include %s: %s", name, os.path.abspath(found[0]))
      if not os.path.isabs(name) and os.path.isfile(name) and len(found) > 1:
        log.warning("gin include %s was read from the current folder, shadowing %s.", name, found[1])
    _log_includes(parsed.includes, search_paths)


def _gin_error(error: Exception) -> str:
  text = str(error).strip()
  return text if text else type(error).__name__


def _is_explicit_path(name: str) -> bool:
  return os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.startswith((".\\", "..\\"))


def resolve_gin_file(name: str, search_paths: list[str]) -> str:
  """Where the gin file `name` of the command line is read from.

  An explicit path (`./x.gin`, `../x.gin`, `/abs/x.gin`, `~/x.gin`) is used as written. Any other name is looked up
  in the project's library first, then in `search_paths`, then in the current folder, so a file in the current
  folder never silently replaces the project's file of the same name (a warning says it was not used).

  Raises:
    FileNotFoundError: the file is nowhere.
  """
  if _is_explicit_path(name):
    path = os.path.expanduser(name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"gin file {name!r} not found.")
    return os.path.abspath(path)
  folders = [*map(str, gin_search_paths()), *[p for p in search_paths if p]]
  for folder in folders:
    candidate = os.path.join(folder, name)
    if os.path.isfile(candidate):
      if os.path.isfile(name) and os.path.abspath(name) != os.path.abspath(candidate):
        log.warning(
          "gin file %s: using %s, not ./%s of the current folder (write ./%s for that one).",
          name,
          candidate,
          name,
          name,
        )
      return os.path.abspath(candidate)
  if os.path.isfile(name):
    return os.path.abspath(name)
  where = ", ".join(folders)
  raise FileNotFoundError(f"gin file {name!r} not found (searched {where} and the current folder).")


def _run_gin_command(command: str, argv: list[str]) -> int:
  bindings, rest = split_gin_flags(argv)
  args = _gin_parser(command).parse_args(rest)
  if args.tfds_data_dir:
    from prompt_tuning import data

    data.set_tfds_data_dir(args.tfds_data_dir)
  search = [p for p in args.gin_search_paths.split(",") if p]
  configure_gin(args.gin_file, args.gin_bindings + bindings, search)
  module_name, function_name = GIN_COMMANDS[command]
  import importlib

  result = getattr(importlib.import_module(module_name), function_name)()
  if result is not None:
    print(result if not isinstance(result, dict) else "\n".join(f"{k}: {v}" for k, v in sorted(result.items())))
  return 0


def _run_inspect(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning inspect", description="nearest vocabulary tokens of each prompt vector"
  )
  parser.add_argument("prompt", help="a prompt: .npy, .safetensors, a PEFT adapter folder or a MODEL_DIR")
  parser.add_argument("--checkpoint", required=True, help="the backbone (its token embedding is compared against)")
  parser.add_argument("--size", default=None, help="named size, for T5X checkpoints")
  parser.add_argument("--vocab", default=None, help="SentencePiece model, to print pieces rather than ids")
  parser.add_argument("--k", type=int, default=5)
  args = parser.parse_args(argv)
  from prompt_tuning import inspect_prompts, prompts
  from prompt_tuning.checkpoints import load_pretrained

  config, params = load_pretrained(args.checkpoint, config=args.size)
  embedding = params["token_embedder"]["embedding"]
  prompt = prompts.load_prompt_file(args.prompt, embed_dim=config.emb_dim)
  vocabulary = None
  if args.vocab:
    import seqio

    vocabulary = seqio.SentencePieceVocabulary(args.vocab, extra_ids=100)
  neighbours = inspect_prompts.nearest_tokens(prompt, embedding, k=args.k, vocabulary=vocabulary)
  print(inspect_prompts.format_nearest(neighbours))
  return 0


def _run_export(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning export", description="write a trained prompt as a PEFT adapter or .npy"
  )
  parser.add_argument("prompt", help="a prompt: .npy, .safetensors, a PEFT adapter folder or a MODEL_DIR")
  parser.add_argument("output", help="the folder (peft) or file (npy) to write")
  parser.add_argument("--format", choices=("peft", "npy"), default="peft")
  parser.add_argument("--base_model", default=None, help="base_model_name_or_path recorded in the PEFT config")
  args = parser.parse_args(argv)
  import numpy as np

  from prompt_tuning import prompts
  from prompt_tuning.checkpoints import peft

  prompt = prompts.load_prompt_file(args.prompt)
  if args.format == "npy":
    np.save(args.output, np.asarray(prompt))
  else:
    peft.export_peft_adapter(prompt, args.output, base_model_name_or_path=args.base_model)
  print(f"wrote {args.format} prompt [{prompt.shape[0]}, {prompt.shape[1]}] to {args.output}")
  return 0


def _dispatch(command: str, argv: list[str]) -> int:
  if command in GIN_COMMANDS:
    return _run_gin_command(command, argv)
  if command == "inspect":
    return _run_inspect(argv)
  if command == "export":
    return _run_export(argv)
  if command == "tasks":
    from prompt_tuning.data import cli as tasks_cli

    return tasks_cli.main(argv)
  print(f"error: unknown command {command!r}.\n{USAGE}", file=sys.stderr)
  return 2


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  debug = "--debug" in rest
  try:
    return _dispatch(command, rest)
  except SystemExit as e:  # argparse already printed its one line
    return int(e.code or 0)
  except KeyboardInterrupt:
    print("interrupted; the last finished checkpoint is kept.", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - our whole message for users; --debug for the traceback
    if debug:
      raise
    print(error_message(e), file=sys.stderr)
    return 1


# Third-party advice this project never follows: loading pickles from files it did not write.
_UNSAFE_ADVICE = re.compile(r"allow_pickle=|weights_only=False|pickle\.load\(|load it unsafely|unsafely", re.IGNORECASE)
_USER_CODE = "in user code:"
_GIN_CONTEXT = re.compile(r"^\s*In call to configurable ")


def unwrap(error: BaseException) -> tuple[str, str]:
  """(type name, message) of the error a user should see.

  TensorFlow re-raises errors from inside `tf.data`/`tf.function` code as "in user code: <traceback> <Type>:
  <message>" (autograph) or with the message embedded in an OpError; the original is what is reported.
  """
  name, message = type(error).__name__, str(error).strip()
  if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str) and len(error.args) == 1:
    message = error.args[0]
  if message.startswith(_USER_CODE):
    tail = [line.strip() for line in message.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(tail) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception):", line)]
    if starts:  # the original's type and message close autograph's report; its message may span lines
      name, _, first = tail[starts[-1]].partition(":")
      name, message = name.split(".")[-1], "\n".join([first.strip(), *tail[starts[-1] + 1 :]]).strip()
  elif "Traceback (most recent call last)" in message:  # an OpError carrying a py_function's traceback
    lines = [line for line in message.splitlines() if line.strip()]
    original = next(
      (line for line in reversed(lines) if re.match(r"^\s*[A-Za-z_][\w.]*(Error|Exception): ", line)), None
    )
    if original:
      name, _, message = original.strip().partition(": ")
      name = name.split(".")[-1]
  return name, message or name


def error_message(error: BaseException) -> str:
  """All lines of the error's message (ours say what to do on the later lines), without unsafe advice."""
  name, message = unwrap(error)
  # gin appends "In call to configurable 'train' (<function ...>)" to errors raised inside configurables.
  lines = [line for line in message.splitlines() if not _UNSAFE_ADVICE.search(line) and not _GIN_CONTEXT.match(line)]
  text = "\n".join(lines).strip() or "the file holds pickled Python objects, which are never loaded here."
  return f"error: {name}: {text}"


if __name__ == "__main__":
  sys.exit(main())
