"""`prompt-tuning serve`: one frozen backbone, loaded as training loads it, behind the HTTP API.

    PROMPT_TUNING_ADMIN_TOKEN=... prompt-tuning serve --gin_file=demo/base.gin --prompts_dir=/tmp/library \
      --port=8000 [--gin.EngineShapes.slots=32] [--gin.NUM_PARTITIONS=2] [--gin.ACTIVATION_DTYPE="'bfloat16'"]

The library folder is loaded at start, and with an admin token (`PROMPT_TUNING_ADMIN_TOKEN` or
`--admin_token_file`) every PUT and DELETE is written through to it (`prompt_tuning.serve.library_files`; the folder
must be writable, and not the demo library shipped in the package). Without an admin token, or with `--read_only`,
the library cannot change. `PROMPT_TUNING_API_TOKEN` or `--api_token_file` guards generate and score
(`prompt_tuning.serve.access`). SIGTERM (or Ctrl-C) drains: requests accepted are answered, new ones get 503, and
the process exits 0.

The backbone is the run's (`prompt_tuning.run.build_serving`, from RunConfig
as runs/run_config.gin binds it, which is always read): INITIAL_CHECKPOINT_PATH
and MODEL_SIZE (any checkpoint format `prompt_tuning.checkpoints.load_pretrained`
reads), in the run's precision (ACTIVATION_DTYPE, FROZEN_DTYPE, REMAT_POLICY),
on the mesh of NUM_PARTITIONS; the vocabulary from VOCABULARY_PATH. The gin is
checked as train's is: a macro set but read by nothing is refused. The shapes
the server compiles for are `prompt_tuning.serve.EngineShapes` (gin).
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

import gin

from prompt_tuning import gin_config, run
from prompt_tuning.serve.engine import EngineShapes

configured_shapes = gin.external_configurable(EngineShapes, name="EngineShapes", module="prompt_tuning.serve")
# RunConfig bound to the run macros; read before the user's files (it assigns no macro, so it resets nothing).
RUN_CONFIG_GIN = "runs/run_config.gin"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="prompt-tuning serve", description=__doc__.splitlines()[0])
  gin_config.add_gin_flags(parser)
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument(
    "--prompts_dir", default=None, help="library folder: loaded at start, read by PUT 'source', and kept up to date"
  )
  parser.add_argument(
    "--admin_token_file", default=None, help="file holding the token PUT/DELETE need (or PROMPT_TUNING_ADMIN_TOKEN)"
  )
  parser.add_argument(
    "--api_token_file", default=None, help="file holding the token generate/score need (or PROMPT_TUNING_API_TOKEN)"
  )
  parser.add_argument("--read_only", action="store_true", help="serve the library folder without ever changing it")
  parser.add_argument("--max_library_bytes", type=int, default=1 << 30, help="cap on the library's host bytes")
  parser.add_argument("--device_cache_bytes", type=int, default=256 << 20, help="cap on prompts cached on device")
  parser.add_argument(
    "--whole_batch", action="store_true", help="dynamic batching without continuous admission (a baseline)"
  )
  parser.add_argument("--no_warm_up", action="store_true", help="compile on first use instead of at start")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks")
  return parser


def library_access(args):
  """(tokens, library folder or None, why changes are refused or None) from the flags, checked before the backbone
  loads. Raises AccessError or LibraryFolderError (what was wrong, what to do)."""
  from prompt_tuning.serve import access, library_files

  tokens = access.load_tokens(args.admin_token_file, args.api_token_file)
  if args.read_only and tokens.admin is not None:
    raise access.AccessError(
      f"--read_only and an admin token ({access.ADMIN_TOKEN_ENV} or --admin_token_file) were both given, but a "
      "read-only library takes no changes; drop one of them."
    )
  if tokens.admin is not None and not args.prompts_dir:
    raise library_files.LibraryFolderError(
      "an admin token enables library changes, but without --prompts_dir they would live in memory only and be "
      "lost at restart; give --prompts_dir=<a writable folder>."
    )
  if args.read_only:
    refused = "this server runs with --read_only: its library cannot change."
  elif tokens.admin is None:
    refused = (
      f"this server's library is read-only: no admin token is configured. Restart it with {access.ADMIN_TOKEN_ENV}"
      "=<token> in its environment (or --admin_token_file=<file>) and send 'Authorization: Bearer <token>'."
    )
  else:
    refused = None
  files = library_files.open_folder(args.prompts_dir, changes=refused is None) if args.prompts_dir else None
  return tokens, files, refused


def build_server(args, shapes: EngineShapes, cfg: run.RunConfig):
  """Loads the backbone onto the mesh (`run.build_serving`: the run's precision settings), the library, and the
  batcher; compiles the programs."""
  import jax

  from prompt_tuning.data import get_vocabulary
  from prompt_tuning.serve import library_files
  from prompt_tuning.serve.app import Server
  from prompt_tuning.serve.batcher import Batcher
  from prompt_tuning.serve.engine import Engine
  from prompt_tuning.serve.metrics import ServeMetrics
  from prompt_tuning.serve.store import DeviceCache, PromptLibrary

  tokens, files, refused = library_access(args)
  serving = run.build_serving(cfg)
  engine = Engine(serving.config, serving.params, serving.mesh, shapes)
  library = PromptLibrary(engine.limits(), args.max_library_bytes, files if files and files.writable else None)
  prompts_dir = Path(args.prompts_dir) if args.prompts_dir else None
  if files is not None:
    logging.info("library: loaded %s", library_files.restore(library, files))
  logging.info("library changes: %s", refused or f"written through to {prompts_dir}")
  cache = DeviceCache(args.device_cache_bytes, engine.row_vectors)
  metrics = ServeMetrics()
  if not args.no_warm_up:
    for program in engine.warm_up():
      logging.info("compiled %s", program)
  jax.effects_barrier()
  batcher = Batcher(engine, cache, metrics, whole_batch=args.whole_batch)
  return Server(engine, library, cache, batcher, metrics, get_vocabulary(), prompts_dir, tokens, refused)


def server_from_flags(argv: list[str]):
  """(flags, server) of `prompt-tuning serve ARGV`: gin parsed and checked as train's (a macro set but read by
  nothing is refused), then `build_server`.

  Raises:
    gin_config.UnreadSettingError: a macro set but read by nothing, naming the closest one that is read.
  """
  bindings, rest = gin_config.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  args.gin_file = [RUN_CONFIG_GIN, *args.gin_file]
  all_bindings = gin_config.configure_from_flags(args, bindings, check_unread=True)
  gin_config.apply_code_read_macros()
  server = build_server(args, configured_shapes(), run.serving_run_config())
  gin_config.warn_unread_bindings(all_bindings)
  return args, server


def main(argv: list[str]) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  args, server = server_from_flags(argv)

  import uvicorn

  from prompt_tuning.serve.app import create_app

  config = uvicorn.Config(
    create_app(server), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=60
  )
  http = uvicorn.Server(config)
  server.draining = lambda: http.should_exit
  # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found: this one, so a drained
  # server exits 0 (not killed by the signal, nor a KeyboardInterrupt).
  drained = []
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda number, frame: drained.append(number))
  print(f"serving on http://{args.host}:{args.port} ({len(server.library)} prompts)", flush=True)
  http.run()
  if drained:
    print(f"stopped by {signal.Signals(drained[0]).name}, after answering the requests it had accepted.", flush=True)
  return 0
