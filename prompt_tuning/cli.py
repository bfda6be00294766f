"""The command line: `prompt-tuning` (and `t5x`, an alias for users' habit).

    prompt-tuning train  --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'" [--gin.NAME=VALUE ...]
    prompt-tuning eval   --gin_file=... (same flags; evaluates the latest checkpoint in MODEL_DIR)
    prompt-tuning infer  --gin_file=... (writes predictions as JSONL)
    prompt-tuning inspect PROMPT --checkpoint BACKBONE [--size NAME] [--vocab SPM] [--k 5]
    prompt-tuning export  PROMPT OUT [--format peft|npy]
    prompt-tuning tasks   list [PATTERN] | show NAME
    prompt-tuning serve  --gin_file=... [--prompts_dir DIR] [--host H] [--port N] (HTTP server, prompt_tuning.serve)

t5x's flags: `--gin_file` (repeatable), `--gin.NAME=VALUE` (a binding, e.g.
`--gin.MODEL_DIR="'/tmp/run'"` or `--gin.train.num_train_steps=100`),
`--gin_bindings` (repeatable, t5x's older spelling), `--gin_search_paths`
(comma-separated; the project's gin/ and configs/ are always searched), and
`--tfds_data_dir`. Errors in flags or configs print one line, not a traceback
(`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GIN_COMMANDS = {
  "train": ("prompt_tuning.train", "train"),
  "eval": ("prompt_tuning.eval", "evaluate"),
  "infer": ("prompt_tuning.infer", "infer"),
}
USAGE = __doc__


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
  """Parses gin files and bindings (t5x semantics: files first, then bindings in order)."""
  import gin

  import prompt_tuning.gin_registry  # noqa: F401  (registers the configurables)

  for path in [*search_paths, *map(str, gin_search_paths())]:
    if path:
      gin.add_config_file_search_path(path)
  missing = [f for f in files if not _resolve_gin_file(f, search_paths)]
  if missing:
    where = ", ".join(str(p) for p in [*search_paths, *gin_search_paths()])
    raise FileNotFoundError(f"gin file {missing[0]!r} not found (searched the current folder and {where}).")
  gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)


def _resolve_gin_file(name: str, search_paths: list[str]) -> bool:
  if Path(name).is_file():
    return True
  return any((Path(p) / name).is_file() for p in [*search_paths, *map(str, gin_search_paths())] if p)


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
  if command == "serve":
    from prompt_tuning.serve import cli as serve_cli

    return serve_cli.main(argv)
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
  except Exception as e:  # noqa: BLE001 - one clear line for users; --debug for the traceback
    if debug:
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {type(e).__name__}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
