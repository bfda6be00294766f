"""The command line: `prompt-tuning` (and `t5x`, an alias for users' habit).

    prompt-tuning train  --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'" [--gin.NAME=VALUE ...]
    prompt-tuning eval   --gin_file=... (same flags; evaluates the latest checkpoint in MODEL_DIR)
    prompt-tuning infer  --gin_file=... (writes predictions as JSONL)
    prompt-tuning transfer SOURCE|rank --gin_file=... [--library DIR] (SPoT: start from, or rank, library prompts;
                         see prompt_tuning/transfer.py)
    prompt-tuning inspect PROMPT --checkpoint BACKBONE [--size NAME] [--vocab SPM] [--k 5]
    prompt-tuning export  PROMPT OUT [--format peft|npy]
    prompt-tuning tasks   list [PATTERN] | show NAME
    prompt-tuning sweep   plan|run|status|report SWEEP.gin (see prompt_tuning/sweeps/cli.py)
    prompt-tuning serve  --gin_file=... [--prompts_dir DIR] [--host H] [--port N] (HTTP server, prompt_tuning.serve)
    prompt-tuning plan   --gin_file=... [--mesh=DxM] [--device=h100] [--search] (memory and FLOPs per device)

t5x's flags: `--gin_file` (repeatable), `--gin.NAME=VALUE` (a binding, e.g.
`--gin.MODEL_DIR="'/tmp/run'"` or `--gin.train.num_train_steps=100`),
`--gin_bindings` (repeatable, t5x's older spelling), `--gin_search_paths`
(comma-separated), `--tfds_data_dir` and `--seqio_additional_cache_dirs`;
multi-host: t5x's `--multiprocess_gpu`, `--coordinator_address`,
`--process_count`, `--process_index`. gin/defaults.gin is parsed first (every
macro's default), so gin files compose in any order. A macro that is set but
read by nothing is an error. A gin file named on the command line is looked up
in the project's library (gin/, configs/) first, then in `--gin_search_paths`,
then in the current folder; write an explicit path (`./my.gin`, `/abs/my.gin`)
to use a file that shares a library file's name. Every resolved path is logged.
Compiled programs are cached on disk (`prompt_tuning.compilation_cache`:
`$PROMPT_TUNING_COMPILATION_CACHE`, default `~/.cache/prompt_tuning/jax`; `off`
switches it off).

Errors print our whole message (what was wrong, and what to do), not a
traceback (`--debug` shows the traceback); TensorFlow's wrapping of errors
raised inside its data pipeline is removed, and its start-up logs are hidden
(`--verbose` shows them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys

from prompt_tuning import distributed, gin_config, startup

GIN_COMMANDS = {
  "train": ("prompt_tuning.train", "train"),
  "eval": ("prompt_tuning.eval", "evaluate"),
  "infer": ("prompt_tuning.infer", "infer"),
  "transfer": ("prompt_tuning.transfer", "main"),
}
# Gin commands with flags of their own: the module's `add_flags(parser)` declares them and its function takes the
# parsed flags.
COMMANDS_WITH_FLAGS = ("transfer",)
USAGE = __doc__


def _gin_parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"prompt-tuning {command}", add_help=True)
  gin_config.add_gin_flags(parser)
  parser.add_argument("--tfds_data_dir", default=None, help="tensorflow-datasets data directory")
  parser.add_argument(
    "--seqio_additional_cache_dirs", default="", help="comma-separated folders of seqio's offline task caches"
  )
  parser.add_argument("--debug", action="store_true", help="show full tracebacks")
  distributed.add_flags(parser)  # t5x's --multiprocess_gpu, --coordinator_address, --process_count, --process_index
  parser.add_argument("--verbose", action="store_true", help="show TensorFlow's and absl's start-up logs")
  return parser


def _run_gin_command(command: str, argv: list[str]) -> int:
  bindings, rest = gin_config.split_gin_flags(argv)
  module_name, function_name = GIN_COMMANDS[command]
  parser = _gin_parser(command)
  if command in COMMANDS_WITH_FLAGS:
    importlib.import_module(module_name).add_flags(parser)
  args = parser.parse_args(rest)
  distributed.initialize_from_flags(args)  # Before anything touches a device.
  if args.verbose:
    startup.start_devices()
  else:
    with startup.native_stderr_hidden():
      startup.start_devices()
  from prompt_tuning import compilation_cache

  compilation_cache.enable()
  if args.tfds_data_dir:
    from prompt_tuning import data

    data.set_tfds_data_dir(args.tfds_data_dir)
  if args.seqio_additional_cache_dirs:
    import seqio

    seqio.add_global_cache_dirs([p for p in args.seqio_additional_cache_dirs.split(",") if p])
  all_bindings = gin_config.configure_from_flags(args, bindings, check_unread=True)
  gin_config.apply_code_read_macros()
  function = getattr(importlib.import_module(module_name), function_name)
  result = function(args) if command in COMMANDS_WITH_FLAGS else function()
  gin_config.warn_unread_bindings(all_bindings)
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
  parser.add_argument("output", help="the folder (peft) or file (npy; .npy is added if the name lacks it) to write")
  parser.add_argument("--format", choices=("peft", "npy"), default="peft")
  parser.add_argument("--base_model", default=None, help="base_model_name_or_path recorded in the PEFT config")
  args = parser.parse_args(argv)
  import numpy as np

  from prompt_tuning import prompts
  from prompt_tuning.checkpoints import peft

  prompt = prompts.load_prompt_file(args.prompt)
  output = args.output
  if args.format == "npy":
    output = output if output.endswith(".npy") else output + ".npy"  # what np.save writes: say so
    np.save(output, np.asarray(prompt))
  else:
    peft.export_peft_adapter(prompt, output, base_model_name_or_path=args.base_model)
  print(f"wrote {args.format} prompt [{prompt.shape[0]}, {prompt.shape[1]}] to {output}")
  return 0


def _run_plan(argv: list[str]) -> int:
  """`prompt-tuning plan`: the planner compiles a model-parallel step on as many CPU devices as its model axis, so
  they are asked for before JAX starts (they cost nothing until used)."""
  import jax

  from prompt_tuning import compilation_cache, plan

  meshes = [b for a, b in zip(["", *argv], argv) if a == "--mesh"] + [a[7:] for a in argv if a.startswith("--mesh=")]
  model = max((int(m.group(1)) for x in meshes if (m := re.fullmatch(r"\s*\d+\s*[x,]\s*(\d+)\s*", x))), default=1)
  jax.config.update("jax_num_cpu_devices", max(plan.HOST_DEVICES, model))
  with startup.native_stderr_hidden():
    startup.start_devices()
  compilation_cache.enable()
  return plan.main(argv)


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
  if command == "sweep":
    from prompt_tuning.sweeps import cli as sweeps_cli

    return sweeps_cli.main(argv)
  if command == "plan":
    return _run_plan(argv)
  print(f"error: unknown command {command!r}.\n{USAGE}", file=sys.stderr)
  return 2


def main(argv: list[str] | None = None, program: bool | None = None) -> int:
  """Runs `prompt-tuning ARGV` and returns its exit status.

  Args:
    argv: the arguments (default: sys.argv[1:]).
    program: whether this call is the whole process (default: when argv is None, as the console scripts call it).
      A program that failed ends within seconds even if a library's thread would keep it alive (`_end_process`).
  """
  program = argv is None if program is None else program
  code = _main(list(sys.argv[1:] if argv is None else argv))
  if program and code != 0:
    _end_process(code)
  return code


# Seconds a failed program waits for other threads to end before it ends itself without them.
THREAD_GRACE_S = 5.0


def _end_process(code: int) -> None:
  """Ends a failed program, even when a library's non-daemon threads would keep the interpreter waiting for them at
  exit forever: orbax's background save threads, after a failed save, wait for a signal that never comes. Waits for
  them up to THREAD_GRACE_S, then flushes the output and exits with `code` (nothing is left to write: the
  checkpoint that failed was cleaned up when its error was raised)."""
  import threading
  import time

  deadline = time.monotonic() + THREAD_GRACE_S
  for thread in threading.enumerate():
    if thread is not threading.main_thread() and not thread.daemon:
      with contextlib.suppress(Exception):  # orbax's threads raise TimeoutError from join(timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
  if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: list[str]) -> int:
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  debug = "--debug" in rest
  if "--verbose" not in rest and command in (*GIN_COMMANDS, "inspect", "export", "tasks", "sweep", "serve", "plan"):
    startup.quiet_start_up(touch_devices=command not in (*GIN_COMMANDS, "plan"))
  elif command not in GIN_COMMANDS:
    rest = [a for a in rest if a != "--verbose"]
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
