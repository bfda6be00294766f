"""`prompt-tuning serve`: one frozen backbone, loaded as training loads it, behind the HTTP API.

    prompt-tuning serve --gin_file=demo/base.gin --prompts_dir=/tmp/library --port=8000 \
      [--gin.EngineShapes.slots=32] [--gin.NUM_PARTITIONS=2] [--gin.ACTIVATION_DTYPE="'bfloat16'"]

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
  parser.add_argument("--prompts_dir", default=None, help="library folder loaded at start (and read by PUT 'source')")
  parser.add_argument("--max_library_bytes", type=int, default=1 << 30, help="cap on the library's host bytes")
  parser.add_argument("--device_cache_bytes", type=int, default=256 << 20, help="cap on prompts cached on device")
  parser.add_argument(
    "--whole_batch", action="store_true", help="dynamic batching without continuous admission (a baseline)"
  )
  parser.add_argument("--no_warm_up", action="store_true", help="compile on first use instead of at start")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks")
  return parser


def build_server(args, shapes: EngineShapes, cfg: run.RunConfig):
  """Loads the backbone onto the mesh (`run.build_serving`: the run's precision settings), the library, and the
  batcher; compiles the programs."""
  import jax

  from prompt_tuning.data import get_vocabulary
  from prompt_tuning.serve.app import Server
  from prompt_tuning.serve.batcher import Batcher
  from prompt_tuning.serve.engine import Engine
  from prompt_tuning.serve.metrics import ServeMetrics
  from prompt_tuning.serve.store import DeviceCache, PromptLibrary

  serving = run.build_serving(cfg)
  engine = Engine(serving.config, serving.params, serving.mesh, shapes)
  library = PromptLibrary(engine.limits(), args.max_library_bytes)
  prompts_dir = Path(args.prompts_dir) if args.prompts_dir else None
  if prompts_dir is not None:
    if not prompts_dir.is_dir():
      raise FileNotFoundError(f"--prompts_dir {prompts_dir} is not a folder.")
    logging.info("library: loaded %s", library.load_folder(prompts_dir))
  cache = DeviceCache(args.device_cache_bytes, engine.row_vectors)
  metrics = ServeMetrics()
  if not args.no_warm_up:
    for program in engine.warm_up():
      logging.info("compiled %s", program)
  jax.effects_barrier()
  batcher = Batcher(engine, cache, metrics, whole_batch=args.whole_batch)
  return Server(engine, library, cache, batcher, metrics, get_vocabulary(), prompts_dir)


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

  print(f"serving on http://{args.host}:{args.port} ({len(server.library)} prompts)", flush=True)
  uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=60)
  return 0
