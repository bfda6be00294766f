"""The command line: `prompt-tuning` (and `t5x`, an alias for users' habit).

    prompt-tuning train  --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'" [--gin.NAME=VALUE ...]
    prompt-tuning eval   --gin_file=... (same flags; evaluates the latest checkpoint in MODEL_DIR)
    prompt-tuning infer  --gin_file=... (writes predictions as JSONL)
    prompt-tuning transfer SOURCE|rank --gin_file=... [--library DIR] (SPoT: start from, or rank, library prompts;
                         see prompt_tuning/transfer.py)
    prompt-tuning inspect PROMPT --checkpoint BACKBONE [--size NAME] [--vocab SPM] [--k 5]
    prompt-tuning export  PROMPT OUT [--format peft|npy]   (PROMPT and OUT may be gs:// paths)
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
import re
import sys

from prompt_tuning import command as command_runner
from prompt_tuning import startup
from prompt_tuning.command import GIN_COMMANDS, error_message  # noqa: F401  (cli.error_message: what it prints)

USAGE = __doc__


def _run_inspect(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning inspect", description="nearest vocabulary tokens of each prompt vector"
  )
  parser.add_argument("prompt", help="a prompt: .npy, .safetensors, a PEFT adapter folder or a MODEL_DIR (or gs://)")
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
  parser.add_argument("prompt", help="a prompt: .npy, .safetensors, a PEFT adapter folder or a MODEL_DIR (or gs://)")
  parser.add_argument("output", help="the folder (peft) or file (npy; .npy is added if the name lacks it), or gs://")
  parser.add_argument("--format", choices=("peft", "npy"), default="peft")
  parser.add_argument("--base_model", default=None, help="base_model_name_or_path recorded in the PEFT config")
  args = parser.parse_args(argv)
  from prompt_tuning import prompts, storage
  from prompt_tuning.checkpoints import peft, prompt_files

  prompt = prompts.load_prompt_file(args.prompt)
  output = args.output
  if args.format == "npy":
    output = output if output.endswith(".npy") else output + ".npy"  # what np.save writes: say so
    storage.write_bytes(storage.path(output), prompt_files.npy_bytes(prompt))
  else:
    peft.export_peft_adapter(prompt, output, base_model_name_or_path=args.base_model)
  print(f"wrote {args.format} prompt [{prompt.shape[0]}, {prompt.shape[1]}] to {output}")
  return 0


def _run_plan(argv: list[str]) -> int:
  """`prompt-tuning plan`: the planner compiles a model-parallel step on as many CPU devices as its model axis, so
  they are asked for before JAX starts (they cost nothing until used). Where JAX has already started in this
  process (a notebook calling cli.main), it plans on the devices there are, and the planner says when a mesh needs
  more."""
  import jax

  from prompt_tuning import compilation_cache, plan

  meshes = [b for a, b in zip(["", *argv], argv) if a == "--mesh"] + [a[7:] for a in argv if a.startswith("--mesh=")]
  model = max((int(m.group(1)) for x in meshes if (m := re.fullmatch(r"\s*\d+\s*[x,]\s*(\d+)\s*", x))), default=1)
  try:
    jax.config.update("jax_num_cpu_devices", max(plan.HOST_DEVICES, model))
  except RuntimeError as e:
    if "backends are initialized" not in str(e):
      raise
  with startup.native_stderr_hidden():
    startup.start_devices()
  compilation_cache.enable()
  return plan.main(argv)


def _dispatch(command: str, argv: list[str]) -> int:
  if command in GIN_COMMANDS:
    return command_runner.run_gin_command(command, argv)
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
      A program that failed ends within seconds even if a library's thread would keep it alive
      (`prompt_tuning.command.end_process`).
  """
  program = argv is None if program is None else program
  code = _main(list(sys.argv[1:] if argv is None else argv))
  if program and code != 0:
    command_runner.end_process(code)
  return code


def _main(argv: list[str]) -> int:
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  quiet = ("inspect", "export", "tasks", "sweep", "serve", "plan")
  if argv[:2] == ["sweep", "status"]:
    # Reads the sweep's records only: no TensorFlow to import and quiet (about 6 of its 7 CPU seconds), for a
    # status polled while the runs train beside it.
    quiet = tuple(c for c in quiet if c != "sweep")
  return command_runner.run(argv[0], argv[1:], _dispatch, quiet=quiet)


if __name__ == "__main__":
  sys.exit(main())
