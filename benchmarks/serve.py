"""Load generator and benchmark of `prompt-tuning serve`: real HTTP against a server it starts (the demo model).

    PYTHONPATH=. python benchmarks/serve.py [--requests 64] [--concurrency 1,8,32,128] [--prompts 1,16,256]
                                            [--repeats 3] [--whole_batch_too]

For every (distinct prompts, concurrency) it sends `--requests` greedy
generations with mixed output lengths (max_decode_length drawn from 4..32)
and reports requests/s, generated tokens/s and p50/p99 latency, then the
ratios: mixed prompts vs one shared prompt (at the highest concurrency),
concurrency 32 vs 1 (batching gain), and continuous vs whole-batch dynamic
batching (`--whole_batch_too` starts a second server with --whole_batch).
Each cell is the median of `--repeats` runs; the spread (min..max) is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
  "slots": "32",
  "input_buckets": "(32,)",
  "admit_buckets": "(1, 8, 32)",
  "score_buckets": "(8,)",
  "beam_buckets": "(1,)",
  "beam_sizes": "(2,)",
  "max_decode_length": "32",
  "max_prompt_length": "20",
  "max_prefix_length": "0",
}
TEXTS = ["Is a cat an animal or a plant?", "oak: a tree of the genus Quercus", "a small dog", "the rose"]


async def _load(url: str, prompt_ids: list[str], requests: int, concurrency: int, seed: int) -> dict[str, float]:
  import httpx

  rng = np.random.default_rng(seed)
  bodies = [
    {"text": TEXTS[i % len(TEXTS)], "prompt_id": prompt_ids[i % len(prompt_ids)], "max_decode_length": int(n)}
    for i, n in enumerate(rng.integers(4, 33, size=requests))
  ]
  latencies, tokens = [], 0
  queue: asyncio.Queue = asyncio.Queue()
  for body in bodies:
    queue.put_nowait(body)

  async def worker(client):
    nonlocal tokens
    while not queue.empty():
      body = queue.get_nowait()
      start = time.perf_counter()
      reply = await client.post("/v1/generate", json=body)
      reply.raise_for_status()
      latencies.append(time.perf_counter() - start)
      tokens += len(reply.json()["token_ids"])

  limits = httpx.Limits(max_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
  return {
    "requests_per_s": requests / elapsed,
    "tokens_per_s": tokens / elapsed,
    "p50_s": float(np.percentile(latencies, 50)),
    "p99_s": float(np.percentile(latencies, 99)),
  }


def _upload(url: str, count: int, emb_dim: int) -> list[str]:
  import httpx

  rng = np.random.default_rng(0)
  ids = [f"p{i}" for i in range(count)]
  with httpx.Client(base_url=url, timeout=60) as client:
    for prompt_id in ids:
      prompt = rng.normal(size=(20, emb_dim)).tolist()
      client.put(f"/v1/prompts/{prompt_id}", json={"method": "prompt", "arrays": {"prompt": prompt}}).raise_for_status()
  return ids


def _median_cell(runs: list[dict[str, float]]) -> dict[str, float]:
  cell = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  cell["rps_min"], cell["rps_max"] = min(r["requests_per_s"] for r in runs), max(r["requests_per_s"] for r in runs)
  return cell


def bench(url: str, args) -> dict[tuple[int, int], dict[str, float]]:
  ids = _upload(url, max(args.prompts), 256)
  table = {}
  for distinct in args.prompts:
    for concurrency in args.concurrency:
      runs = [asyncio.run(_load(url, ids[:distinct], args.requests, concurrency, seed)) for seed in range(args.repeats)]
      table[(distinct, concurrency)] = _median_cell(runs)
      print(distinct, concurrency, table[(distinct, concurrency)], flush=True)
  return table


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=64)
  parser.add_argument("--concurrency", default="1,8,32,128")
  parser.add_argument("--prompts", default="1,16,256")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--whole_batch_too", action="store_true")
  parser.add_argument("--output", default=None, help="write the tables as JSON here")
  args = parser.parse_args(argv)
  args.concurrency = [int(c) for c in args.concurrency.split(",")]
  args.prompts = [int(p) for p in args.prompts.split(",")]
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
  import test_serve  # the server start/stop the tests use

  test_serve.SHAPES.clear()
  test_serve.SHAPES.update(SHAPES)
  results = {}
  modes = [("continuous", ())] + ([("whole_batch", ("--whole_batch",))] if args.whole_batch_too else [])
  with tempfile.TemporaryDirectory() as tmp:
    library = Path(tmp) / "library"
    library.mkdir()
    for name, extra in modes:
      process, url = test_serve.start_server(library, Path(tmp) / f"{name}.log", extra)
      try:
        results[name] = bench(url, args)
      finally:
        test_serve.stop_server(process)
  cont = results["continuous"]
  top, many = max(args.concurrency), max(args.prompts)
  print("\n| prompts | concurrency | req/s (min..max) | tokens/s | p50 s | p99 s |\n|---|---|---|---|---|---|")
  for (p, c), cell in cont.items():
    print(
      f"| {p} | {c} | {cell['requests_per_s']:.2f} ({cell['rps_min']:.2f}..{cell['rps_max']:.2f}) | "
      f"{cell['tokens_per_s']:.1f} | {cell['p50_s']:.3f} | {cell['p99_s']:.3f} |"
    )
  ratios = {"mixed_vs_shared": cont[(many, top)]["requests_per_s"] / cont[(1, top)]["requests_per_s"]}
  if 32 in args.concurrency and 1 in args.concurrency:
    ratios["c32_vs_c1"] = cont[(1, 32)]["requests_per_s"] / cont[(1, 1)]["requests_per_s"]
  if "whole_batch" in results:
    ratios["continuous_vs_whole_batch"] = (
      cont[(1, top)]["tokens_per_s"] / results["whole_batch"][(1, top)]["tokens_per_s"]
    )
  print("\nratios:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
  if args.output:
    Path(args.output).write_text(json.dumps({"ratios": ratios, "continuous": {str(k): v for k, v in cont.items()}}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
