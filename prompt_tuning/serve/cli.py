"""`prompt-tuning serve`: one frozen backbone, loaded as training loads it, behind the HTTP API.

    PROMPT_TUNING_ADMIN_TOKEN=... prompt-tuning serve --gin_file=demo/base.gin --prompts_dir=/tmp/library \
      --port=8000 [--gin.EngineShapes.slots=32] [--gin.NUM_PARTITIONS=2]

The library folder is loaded at start, and with an admin token (`PROMPT_TUNING_ADMIN_TOKEN` or
`--admin_token_file`) every PUT and DELETE is written through to it (`prompt_tuning.serve.library_files`; the folder
must be writable, and not the demo library shipped in the package). Without an admin token, or with `--read_only`,
the library cannot change. `PROMPT_TUNING_API_TOKEN` or `--api_token_file` guards generate and score
(`prompt_tuning.serve.access`). SIGTERM (or Ctrl-C) drains: requests accepted are answered, new ones get 503, and
the process exits 0.

The backbone comes from the gin macros INITIAL_CHECKPOINT_PATH and MODEL_SIZE
(any checkpoint format `prompt_tuning.checkpoints.load_pretrained` reads),
the vocabulary from VOCABULARY_PATH, the mesh from NUM_PARTITIONS (as for
train/eval/infer: include runs/run_config.gin, or a config that does). The
shapes the server compiles for are `prompt_tuning.serve.EngineShapes` (gin).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
from pathlib import Path

import gin

from prompt_tuning.serve.engine import EngineShapes

configured_shapes = gin.external_configurable(EngineShapes, name="EngineShapes", module="prompt_tuning.serve")

_MACRO_BINDINGS = (
  "prompt_tuning.serve.ServeConfig.initial_checkpoint_path = %INITIAL_CHECKPOINT_PATH",
  "prompt_tuning.serve.ServeConfig.model_size = %MODEL_SIZE",
  "prompt_tuning.serve.ServeConfig.num_partitions = %NUM_PARTITIONS",
)


@gin.configurable(module="prompt_tuning.serve")
@dataclasses.dataclass
class ServeConfig:
  """The backbone and the mesh (bound from the run's macros by the command line)."""

  initial_checkpoint_path: str = gin.REQUIRED
  model_size: str | None = None
  num_partitions: int = 1
  mesh_shape: tuple[int, int] | None = None


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="prompt-tuning serve", description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding NAME=VALUE (repeatable)")
  parser.add_argument("--gin_search_paths", default="", help="comma-separated extra folders to search for gin files")
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


def build_server(args, shapes: EngineShapes, cfg: ServeConfig):
  """Loads the backbone onto the mesh, the library, and the batcher; compiles the programs."""
  import jax

  from prompt_tuning import partitioning
  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.data import get_vocabulary
  from prompt_tuning.models.t5 import param_logical_axes
  from prompt_tuning.serve import library_files
  from prompt_tuning.serve.app import Server
  from prompt_tuning.serve.batcher import Batcher
  from prompt_tuning.serve.engine import Engine
  from prompt_tuning.serve.metrics import ServeMetrics
  from prompt_tuning.serve.store import DeviceCache, PromptLibrary

  tokens, files, refused = library_access(args)
  mesh = partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape)
  config, host_params = load_pretrained(cfg.initial_checkpoint_path, config=cfg.model_size)
  shardings = partitioning.shardings_for(param_logical_axes(config), mesh, partitioning.logical_rules())
  params = partitioning.with_sharding(host_params, shardings)
  engine = Engine(config, params, mesh, shapes)
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


def main(argv: list[str]) -> int:
  from prompt_tuning import cli

  bindings, rest = cli.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  search = [p for p in args.gin_search_paths.split(",") if p]
  cli.configure_gin(args.gin_file, [*_MACRO_BINDINGS, *args.gin_bindings, *bindings], search)
  server = build_server(args, configured_shapes(), ServeConfig())

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
