"""A/B of `prompt-tuning serve` from two checkouts: the same requests, rounds alternating, tokens compared.

    PYTHONPATH=. nice -n 5 python benchmarks/serve_ab.py BEFORE_CHECKOUT AFTER_CHECKOUT [--rounds 4] [--repeats 3]
        [--concurrency 32] [--shape input_buckets='(16, 32)' ...]

Starts one server from each checkout (each with its own code, the shapes of this file's `serve.SHAPES`, changed by
`--shape name=value`), uploads one prompt to both, then runs rounds in the order before, after, after, before, ...;
each round sends `--repeats` batches of 32 requests at concurrency 32 (or `--concurrency`): `serve.py`'s
requests, one per seed, the same seeds in every round. Prints req/s per round, the median (min-max) of each side,
their ratio, the load average, and whether every request got the same tokens from both servers. A checkout may be
a `git archive` of a commit unpacked anywhere (`git archive COMMIT | tar -x -C /tmp/before`); its
tests/test_serve.py starts its server.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import serve  # noqa: E402  (this folder's benchmark: its requests, shapes and upload)

CONCURRENCY = 32


def _server_module(checkout: Path, name: str):
  """The checkout's tests/test_serve.py (its start_server runs that checkout's code)."""
  spec = importlib.util.spec_from_file_location(f"test_serve_{name}", checkout / "tests" / "test_serve.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


async def _batch(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[list[int]]]:
  """(req/s, each request's tokens) of one batch at `concurrency` (serve.py's load generator)."""
  tokens: list = [None] * len(bodies)
  run = await serve._load(url, bodies, concurrency, tokens)
  assert None not in tokens, "a request's tokens were not kept: the tokens check below would compare nothing"
  return run["requests_per_s"], tokens


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("before", type=Path)
  parser.add_argument("after", type=Path)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3, help="batches of 32 requests per round")
  parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight")
  parser.add_argument("--shape", action="append", default=[], help="an EngineShapes setting, name=value")
  args = parser.parse_args(argv)
  shapes = dict(serve.SHAPES)
  for item in args.shape:
    name, _, value = item.partition("=")
    if not value:
      parser.error(f"--shape {item!r}: give name=value, e.g. input_buckets='(16, 32)'.")
    shapes[name] = value
  sides = {"before": args.before.resolve(), "after": args.after.resolve()}
  prompts = np.random.default_rng(0).normal(size=(1, serve.PROMPT_LENGTH, 256)).astype(np.float32)
  rates: dict[str, list[float]] = {name: [] for name in sides}
  tokens: dict[str, dict[int, list]] = {name: {} for name in sides}
  loads = []
  servers = {}
  with tempfile.TemporaryDirectory() as tmp:
    try:
      for name, checkout in sides.items():
        module = _server_module(checkout, name)
        module.SHAPES.clear()
        module.SHAPES.update(shapes)
        module.MAX_LIBRARY_BYTES, module.DEVICE_CACHE_BYTES = 1 << 30, 1 << 30
        library = Path(tmp) / name
        library.mkdir()
        # From the checkout's folder: `python -m` puts the working folder first on the server's path, so a server
        # started from elsewhere runs that folder's code (before this, both sides ran the launching checkout's).
        here = os.getcwd()
        os.chdir(checkout)
        try:
          process, url = module.start_server(library, Path(tmp) / f"{name}.log")
        finally:
          os.chdir(here)
        servers[name] = (module, process, url)
        ids = serve._upload(url, prompts, module.ADMIN)
        asyncio.run(_batch(url, serve._bodies(ids, CONCURRENCY, 99), args.concurrency))  # warm
      for r in range(args.rounds):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
          url = servers[name][2]
          for seed in range(args.repeats):
            rate, out = asyncio.run(_batch(url, serve._bodies(ids, CONCURRENCY, seed), args.concurrency))
            rates[name].append(rate)
            tokens[name].setdefault(seed, out)
          loads.append(os.getloadavg()[0])
          print(f"round {r} {name}: req/s {[round(x, 1) for x in rates[name][-args.repeats :]]}", flush=True)
    finally:
      for module, process, _ in servers.values():
        module.stop_server(process)
  print(f"shapes: {shapes}")
  for name, values in rates.items():
    print(
      f"{name} ({sides[name]}): req/s {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}), "
      f"{len(values)} batches"
    )
  ratio = statistics.median(rates["after"]) / statistics.median(rates["before"])
  print(f"after / before (medians): {ratio:.2f}x; load average {min(loads):.1f}-{max(loads):.1f}")
  print(f"tokens identical: {tokens['before'] == tokens['after']}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
