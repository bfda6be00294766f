"""Running a command as a program, what `prompt-tuning` (`prompt_tuning.cli`, which dispatches) and `python -m
prompt_tuning.train|eval|infer` share, so that no module has to import the command line:

- `run_gin_command`: a gin-configured command (train, eval, infer, transfer): t5x's flags, devices started
  (multi-host first), gin configured with the unread-setting check, the command's configurable called, its
  result printed;
- `run`: a command's errors as one message a user reads (`error_message`: what was wrong and what to do, TensorFlow's
  wrapping removed, no traceback unless --debug), its exit status;
- `end_process`: a failed program ends even when a library's thread would keep it alive;
- `main`: `python -m prompt_tuning.train ...` (the same as `prompt-tuning train ...`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable

from prompt_tuning import distributed, gin_config, interrupts, startup

GIN_COMMANDS = {
  "train": ("prompt_tuning.train", "train"),
  "eval": ("prompt_tuning.eval", "evaluate"),
  "infer": ("prompt_tuning.infer", "infer"),
  "transfer": ("prompt_tuning.transfer", "main"),
}
# Gin commands with flags of their own: the module's `add_flags(parser)` declares them and its function takes the
# parsed flags.
COMMANDS_WITH_FLAGS = ("transfer",)


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


def run_gin_command(command: str, argv: list[str]) -> int:
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


# Seconds a failed program waits for other threads to end before it ends itself without them.
THREAD_GRACE_S = 5.0


def end_process(code: int) -> None:
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


def run(command: str, argv: list[str], dispatch: Callable[[str, list[str]], int], quiet: tuple[str, ...] = ()) -> int:
  """Runs `dispatch(command, argv)` and returns its exit status; an error is printed as `error_message` (status 1;
  --debug raises it instead), Ctrl-C is status 130.

  Args:
    quiet: the commands whose start-up logs are hidden unless --verbose (the gin commands always take --verbose).
  """
  debug = "--debug" in argv
  if "--verbose" not in argv and command in (*GIN_COMMANDS, *quiet):
    startup.quiet_start_up(touch_devices=command not in (*GIN_COMMANDS, "plan"))
  elif command not in GIN_COMMANDS:
    argv = [a for a in argv if a != "--verbose"]
  try:
    with interrupts.remembering_ctrl_c():
      return dispatch(command, argv)
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


def main(command: str, argv: list[str] | None = None) -> int:
  """`python -m prompt_tuning.<command> ARGV`, a whole process: the same as `prompt-tuning <command> ARGV`."""
  code = run(command, list(sys.argv[1:] if argv is None else argv), run_gin_command)
  if code != 0:
    end_process(code)
  return code


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
