"""Load generator and benchmark of `prompt-tuning serve`: real HTTP against a server it starts (the demo model).

    PYTHONPATH=. nice -n 19 python benchmarks/serve.py [--requests 16] [--concurrency 1,8,32,128]
        [--prompts 1,16,256] [--repeats 3] [--whole_batch_too] [--hf_too] [--hf_threads 0] [--no_http]
        [--output results.json]

For every (distinct prompts, concurrency) it sends max(--requests, 2 x
concurrency) greedy generations with mixed output lengths (max_decode_length
drawn from 4..32) and reports requests/s, generated tokens/s and p50/p99
latency, and where the server's time went (its /metrics counters around each
run): the share of the elapsed time its batcher spent in the model's programs,
decoder steps and admissions per request, and rows per step. Ratios, all from this one run:

- mixed vs shared: the most distinct prompts vs one shared prompt, at each
  concurrency (goal >= 0.95x);
- batched vs one at a time: concurrency 32 vs 1, one prompt (goal >= 5x);
- continuous vs whole-batch dynamic batching (`--whole_batch_too` starts a
  second server with --whole_batch: a new batch only once every slot of the
  last one is free), tokens/s on the same mixed-length requests, one prompt,
  at concurrency 32 and 128;
- ours vs Hugging Face generate + PEFT prompt tuning (`--hf_too`): the same
  requests and prompts (PEFT adapter folders written by
  `prompt_tuning.checkpoints.peft`) through `PeftModel.generate` on the same
  demo model (its HF folder), one prompt at a time: requests grouped by
  prompt, each group generated in batches of up to 32 (the server's slots)
  with the group's longest max_decode_length; our server at concurrency 32.
  Each repeat of ours is followed by HF's on the same requests (interleaved),
  and the ratio is taken per repeat: median (min-max). Where HF's time went
  is measured too, beside the server's: the same batches again with
  max_new_tokens=1 (its encoder and first step), the rest being its later
  decoder steps (not timed into its req/s). torch runs one thread
  per core (`--hf_threads` to change: on a box busy with other work, torch's
  threads wait on each other and HF slows several-fold, one thread far less).

`--no_http` measures the server without HTTP: the same server (flags, shapes,
library) built in this process, `concurrency` client threads submitting the
same requests straight to its batcher. Beside the HTTP run it says what the
HTTP front end and the load generator, which share this machine's cores with
the batcher, cost.

Each cell is the median of `--repeats` runs (different request draws); the
spread (min..max) is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
  "slots": "32",
  # The requests' inputs are 5-12 tokens: a bucket of 16 beside 32 halves the padding the encoder runs (HF's
  # generate pads each batch to its longest input); admissions of any size pad to at most twice their rows.
  "input_buckets": "(16, 32)",
  "admit_buckets": "(1, 2, 4, 8, 16, 32)",
  "score_buckets": "(8,)",
  "beam_buckets": "(1,)",
  "beam_sizes": "(2,)",
  "max_decode_length": "32",
  "max_prompt_length": "20",
  "max_prefix_length": "0",
  "methods": "('prompt',)",  # what the benchmark's library holds: no other method's leaves in the programs
}
TEXTS = ["Is a cat an animal or a plant?", "oak: a tree of the genus Quercus", "a small dog", "the rose"]
PROMPT_LENGTH = 20
HF_BATCH = 32  # the server's slots


def _bodies(prompt_ids: list[str], requests: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [
    {"text": TEXTS[i % len(TEXTS)], "prompt_id": prompt_ids[i % len(prompt_ids)], "max_decode_length": int(n)}
    for i, n in enumerate(rng.integers(4, 33, size=requests))
  ]


def _summary(requests: int, tokens: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
  return {
    "requests_per_s": requests / elapsed,
    "tokens_per_s": tokens / elapsed,
    "p50_s": float(np.percentile(latencies, 50)),
    "p99_s": float(np.percentile(latencies, 99)),
  }


async def _load(url: str, bodies: list[dict], concurrency: int, outputs: list | None = None) -> dict[str, float]:
  """`concurrency` clients on keep-alive connections, each sending its next request once its last is answered;
  with `outputs` (a list as long as `bodies`), each request's token ids are kept at its index (serve_ab.py's check).

  aiohttp, not httpx (the tests' client): the load generator shares this machine's cores with the server, and
  httpx's client took 2.0-2.2 ms of CPU per request here against aiohttp's 0.5-0.7 ms (the same requests, 3 runs
  each): CPU the server would not lose to clients on other machines, and that HF + PEFT, called in process, never
  pays."""
  import aiohttp

  latencies, tokens = [], 0
  pending = list(reversed(range(len(bodies))))

  async def worker(session):
    nonlocal tokens
    while pending:
      i = pending.pop()
      start = time.perf_counter()
      async with session.post("/v1/generate", json=bodies[i]) as reply:
        reply.raise_for_status()
        result = await reply.json()
      latencies.append(time.perf_counter() - start)
      tokens += len(result["token_ids"])
      if outputs is not None:
        outputs[i] = result["token_ids"]

  timeout = aiohttp.ClientTimeout(total=600)
  connector = aiohttp.TCPConnector(limit=concurrency)
  async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as session:
    start = time.perf_counter()
    await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
  return _summary(len(bodies), tokens, elapsed, latencies)


def _in_process_load(server, bodies: list[dict], concurrency: int) -> dict[str, float]:
  """`_load` without HTTP: `concurrency` client threads submit the same requests straight to the server's batcher
  (each its next once its last is answered), their tokens encoded as the app encodes them."""
  import concurrent.futures
  import queue

  from prompt_tuning.serve.app import _input_tokens
  from prompt_tuning.serve.batcher import GenerateJob

  pending: queue.SimpleQueue = queue.SimpleQueue()
  for body in bodies:
    pending.put(body)

  def client() -> tuple[list[float], int]:
    latencies, tokens = [], 0
    while True:
      try:
        body = pending.get_nowait()
      except queue.Empty:
        return latencies, tokens
      start = time.perf_counter()
      entry = server.library.get(body["prompt_id"])
      job = GenerateJob(_input_tokens(server, body["text"], None), entry, "greedy", body["max_decode_length"])
      tokens += len(server.batcher.submit(job).result()["token_ids"])
      latencies.append(time.perf_counter() - start)

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    done = [future.result() for future in [pool.submit(client) for _ in range(concurrency)]]
  elapsed = time.perf_counter() - start
  return _summary(len(bodies), sum(t for _, t in done), elapsed, [x for latencies, _ in done for x in latencies])


def _in_process_server(prompts: np.ndarray, ids: list[str], start: bool = True):
  """The server `test_serve.start_server` starts (the same flags and shapes), built in this process, its batcher
  running (unless not `start`: serve_step.py calls its engine itself), the prompts in its library: what
  `--no_http` measures."""
  import test_serve

  from prompt_tuning.serve import cli

  flags = ["--gin_file=demo/base.gin", f"--max_library_bytes={test_serve.MAX_LIBRARY_BYTES}"]
  flags += [f"--device_cache_bytes={test_serve.DEVICE_CACHE_BYTES}"]
  _, server = cli.server_from_flags(flags + [f"--gin.EngineShapes.{k}={v}" for k, v in SHAPES.items()])
  for prompt_id, prompt in zip(ids, prompts):
    server.library.put(prompt_id, "prompt", {"prompt": prompt})
  if start:
    server.batcher.start()
  return server


def _upload(url: str, prompts: np.ndarray, admin: dict[str, str] | None = None) -> list[str]:
  """Uploads each prompt as p0, p1, ...; admin: the server's admin header (default: the token the servers
  test_serve.py starts take)."""
  import httpx

  if admin is None:
    import test_serve

    admin = test_serve.ADMIN
  ids = [f"p{i}" for i in range(len(prompts))]
  with httpx.Client(base_url=url, timeout=60, headers=admin) as client:
    for prompt_id, prompt in zip(ids, prompts):
      body = {"method": "prompt", "arrays": {"prompt": prompt.tolist()}}
      client.put(f"/v1/prompts/{prompt_id}", json=body).raise_for_status()
  return ids


def _counters(target) -> dict[str, float]:
  """The server's counters that account for a run's time (its /metrics, `prompt_tuning.serve.metrics`); target: its
  URL, or the server object `--no_http` runs."""
  import httpx
  from prometheus_client.parser import text_string_to_metric_families

  text = (
    httpx.get(f"{target}/metrics", timeout=30).text if isinstance(target, str) else target.metrics.render().decode()
  )
  counters = {}
  for family in text_string_to_metric_families(text):
    for sample in family.samples:
      label = sample.labels.get("program") or sample.labels.get("kind")
      if sample.name.endswith(("_sum", "_count")) and family.name in ("serve_engine_seconds", "serve_batch_size"):
        counters[f"{sample.name}:{label}"] = sample.value
  return counters


ACCOUNTING = (
  "engine_share",
  "step_share",
  "admit_share",
  "steps_per_request",
  "admissions_per_request",
  "rows_per_step",
  "step_ms",
  "admit_ms",
)


HF_ACCOUNTING = ("first_token_share", "first_token_ms", "steps_per_request", "step_ms")  # `HfPeft.run`'s split


def _accounting(before: dict[str, float], after: dict[str, float], run: dict[str, float], requests: int) -> dict:
  """Where a run's time went, from the server's counters: the share of the elapsed time the batcher spent in the
  model's programs (all, decoder steps, admissions), decoder steps and admissions per request, rows per step (of
  the slots), and the mean wall time of one step and one admission."""
  delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
  elapsed = requests / run["requests_per_s"]
  steps = delta.get("serve_batch_size_count:step", 0.0)
  admissions = delta.get("serve_batch_size_count:admit", 0.0)
  engine = sum(v for k, v in delta.items() if k.startswith("serve_engine_seconds_sum:"))
  step_seconds = delta.get("serve_engine_seconds_sum:step", 0.0)
  admit_seconds = delta.get("serve_engine_seconds_sum:admit", 0.0)
  return {
    "engine_share": engine / elapsed,
    "step_share": step_seconds / elapsed,
    "admit_share": admit_seconds / elapsed,
    "steps_per_request": steps / requests,
    "admissions_per_request": admissions / requests,
    "rows_per_step": delta.get("serve_batch_size_sum:step", 0.0) / max(steps, 1.0),
    "step_ms": 1e3 * step_seconds / max(steps, 1.0),
    "admit_ms": 1e3 * admit_seconds / max(admissions, 1.0),
  }


def admission_floor(prompt: np.ndarray):
  """A function of requests giving the seconds their admissions take at least: the FLOPs (XLA's count) of the
  encoding each one needs, alone and unpadded (its prompt and its tokens, EOS included: the encoder and the
  projection of its cross-attention keys and values), at `matmul_rate`, measured once here."""
  import functools

  rate = matmul_rate()
  work = functools.lru_cache(functools.partial(_encoding_flops, prompt=prompt))
  return lambda bodies: sum(work(b["text"]) for b in bodies) / rate


def _encoding_flops(text: str, prompt: np.ndarray) -> float:
  """XLA-counted FLOPs of encoding `text` alone, unpadded, and projecting its cross-attention keys and values."""
  import jax

  from prompt_tuning import demo_data
  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.data import get_vocabulary
  from prompt_tuning.models.t5 import T5

  config, params = load_pretrained(str(demo_data.DEMO_MODEL_DIR))
  vocabulary, model = get_vocabulary(str(demo_data.DEMO_VOCABULARY)), T5(config)

  def admit(params, tokens, prompt):
    encoded, mask = model.apply({"params": params}, tokens, prompt=prompt, method=T5.encode)
    return model.apply({"params": params}, encoded, mask, 1, 1, method=T5.init_cache, mutable=["cache"])[1]

  n = len(vocabulary.encode(text)) + 1
  analysis = jax.jit(admit).lower(params, np.ones((1, n), np.int32), prompt).compile().cost_analysis()
  return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def matmul_rate() -> float:
  """The best FLOP/s this machine's XLA gets from a matmul: the larger of the [2048]^2 roof (`common.matmul_roof`)
  and the best of an encoder MLP's matmul at an admission's size ([8 x 36 positions, 256] @ [256, 768], the fastest
  shape measured here), so a bound read against it favours us."""
  import jax
  import jax.numpy as jnp
  from common import matmul_roof

  chain = 16  # matmuls in one program (distinct weights, as the layers'), so no call's start is counted
  x, weights = jnp.ones((288, 256)), [jnp.full((256, 768), 1e-3 * i) for i in range(chain)]
  matmuls = jax.jit(lambda x, weights: sum(jnp.sum((x @ w)[:, 0]) for w in weights))
  matmuls(x, weights).block_until_ready()
  times = []
  for _ in range(20):
    start = time.perf_counter()
    matmuls(x, weights).block_until_ready()
    times.append(time.perf_counter() - start)
  return max(matmul_roof(repeats=5)[0], chain * 2.0 * 288 * 256 * 768 / min(times))


def _median_cell(runs: list[dict[str, float]]) -> dict[str, float]:
  cell = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  for key in ("requests_per_s", "tokens_per_s"):
    cell[f"{key}_min"], cell[f"{key}_max"] = min(r[key] for r in runs), max(r[key] for r in runs)
  return cell


def _requests(args, concurrency: int) -> int:
  return max(args.requests, 2 * concurrency)


def bench(
  target, ids: list[str], args, prompts: list[int], concurrency: list[int], hf: HfPeft | None = None, floor=None
) -> tuple[dict, dict, dict, dict]:
  """(ours, HF's, per-repeat ours / HF req/s, per-repeat ceilings of that ratio), each by (prompts, concurrency):
  every cell's repeats; with `hf`, at concurrency 32, each repeat of
  ours is followed by HF's on the same requests (interleaved, so load moving between them hits both alike).
  target: the server's URL, or (`--no_http`) the server object built in this process. floor: with `hf`, a
  function of a repeat's requests giving the seconds their admissions take at least (`admission_floor`); a
  repeat's ceiling is HF's time over this server's with its admissions at that floor, its steps and the time
  outside the model as measured."""
  table, hf_table, ratios, ceilings = {}, {}, {}, {}
  for distinct in prompts:
    for c in concurrency:
      runs, hf_runs = [], []
      for seed in range(args.repeats):
        bodies = _bodies(ids[:distinct], _requests(args, c), seed)
        before = _counters(target)
        if isinstance(target, str):
          runs.append(asyncio.run(_load(target, bodies, c)))
        else:
          runs.append(_in_process_load(target, bodies, c))
        runs[-1].update(_accounting(before, _counters(target), runs[-1], len(bodies)))
        if hf is not None and c == 32:
          hf_runs.append(hf.run(bodies))
          print("hf", distinct, {k: round(v, 3) for k, v in hf_runs[-1].items()}, flush=True)
          if floor is not None:  # the ceiling: this run's steps and time outside the model, admissions at the floor
            ours = runs[-1]
            elapsed = len(bodies) / ours["requests_per_s"]
            kept = elapsed * (ours["step_share"] + 1.0 - ours["engine_share"])
            ceilings.setdefault((distinct, c), []).append(hf_runs[-1]["elapsed_s"] / (kept + floor(bodies)))
      table[(distinct, c)] = _median_cell(runs)
      print(distinct, c, {k: round(v, 3) for k, v in table[(distinct, c)].items()}, flush=True)
      if hf_runs:
        hf_table[(distinct, c)] = _median_cell(hf_runs)
        ratios[(distinct, c)] = [o["requests_per_s"] / h["requests_per_s"] for o, h in zip(runs, hf_runs)]
  return table, hf_table, ratios, ceilings


class HfPeft:
  """HF generate + PEFT prompt tuning on the same requests, one prompt at a time (module docstring)."""

  def __init__(self, prompts: np.ndarray, ids: list[str], folder: Path, threads: int = 0):
    import peft
    import torch
    import transformers

    from prompt_tuning import demo_data
    from prompt_tuning.checkpoints.peft import export_peft_adapter
    from prompt_tuning.data import get_vocabulary

    torch.set_num_threads(threads or os.cpu_count() or 1)
    self.torch = torch
    self.vocabulary = get_vocabulary(str(demo_data.DEMO_VOCABULARY))
    base = transformers.T5ForConditionalGeneration.from_pretrained(str(demo_data.DEMO_MODEL_DIR)).eval()
    model = None
    for prompt_id, prompt in zip(ids, prompts):
      path = export_peft_adapter(prompt, folder / f"peft_{prompt_id}")
      if model is None:
        model = peft.PeftModel.from_pretrained(base, str(path), adapter_name=prompt_id)
      else:
        model.load_adapter(str(path), adapter_name=prompt_id)
    self.model = model.eval()

  def run(self, bodies: list[dict]) -> dict[str, float]:
    """The requests' req/s, tokens/s and latencies, and where HF's time went: the same batches generated again
    with max_new_tokens=1 (the encoder and the first decoder step: `first_token_share` of the run, and
    `first_token_ms` per request), the rest of the run being its other decoder steps (`steps_per_request`, and
    `step_ms` the mean of one, 32 rows)."""
    out = self._generate(bodies, None)
    first = self._generate(bodies, 1)
    steps = out.pop("positions") - first.pop("positions")
    hf_steps_s = out["elapsed_s"] - first["elapsed_s"]
    return dict(
      out,
      first_token_share=first["elapsed_s"] / out["elapsed_s"],
      first_token_ms=1e3 * first["elapsed_s"] / len(bodies),
      steps_per_request=steps / len(bodies),
      step_ms=1e3 * hf_steps_s / max(steps, 1),
    )

  def _generate(self, bodies: list[dict], max_new_tokens: int | None) -> dict[str, float]:
    torch = self.torch
    groups: dict[str, list[dict]] = {}
    for body in bodies:
      groups.setdefault(body["prompt_id"], []).append(body)
    latencies, tokens, positions = [], 0, 0
    start = time.perf_counter()
    for prompt_id, group in groups.items():
      self.model.set_adapter(prompt_id)
      for first in range(0, len(group), HF_BATCH):
        chunk = group[first : first + HF_BATCH]
        rows = [list(self.vocabulary.encode(b["text"])) + [1] for b in chunk]
        x = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
        for i, row in enumerate(rows):
          x[i, : len(row)] = torch.tensor(row)
        new_tokens = max_new_tokens or max(b["max_decode_length"] for b in chunk)
        with torch.no_grad():
          out = self.model.generate(
            input_ids=x,
            attention_mask=(x > 0).long(),
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
          )
        done = time.perf_counter() - start
        positions += out.shape[1] - 1  # the decoder steps run (all rows stop at once: EOS or max_new_tokens)
        for body, row in zip(chunk, out[:, 1:].tolist()):  # drop the start token
          row = row[: body["max_decode_length"]]
          tokens += row.index(1) + 1 if 1 in row else len(row)
          latencies.append(done)
    elapsed = time.perf_counter() - start
    return dict(_summary(len(bodies), tokens, elapsed, latencies), elapsed_s=elapsed, positions=positions)


def _hf_worker(connection, prompts: np.ndarray, ids: list[str], folder: str, threads: int) -> None:
  hf = HfPeft(prompts, ids, Path(folder), threads)
  connection.send("ready")
  while (bodies := connection.recv()) is not None:
    connection.send(hf.run(bodies))


class HfPeftProcess:
  """`HfPeft` in a child process of its own (`--no_http`): torch and JAX in one process slow each other several-fold
  (each one's threads wait on the other's), so HF runs apart from our in-process server, as it does from the
  server process without the flag."""

  def __init__(self, prompts: np.ndarray, ids: list[str], folder: Path, threads: int = 0):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    self.connection, child = context.Pipe()
    self.process = context.Process(target=_hf_worker, args=(child, prompts, ids, str(folder), threads), daemon=True)
    self.process.start()
    if self.connection.recv() != "ready":
      raise RuntimeError("the HF process did not start")

  def run(self, bodies: list[dict]) -> dict[str, float]:
    self.connection.send(bodies)
    return self.connection.recv()

  def close(self) -> None:
    self.connection.send(None)
    self.process.join(60)


def _cell_row(label: str, cell: dict) -> str:
  return (
    f"| {label} | {cell['requests_per_s']:.2f} ({cell['requests_per_s_min']:.2f}..{cell['requests_per_s_max']:.2f}) | "
    f"{cell['tokens_per_s']:.1f} ({cell['tokens_per_s_min']:.1f}..{cell['tokens_per_s_max']:.1f}) | "
    f"{cell['p50_s']:.3f} | {cell['p99_s']:.3f} |"
  )


def _ratio(a: dict, b: dict, key: str = "requests_per_s") -> str:
  low, high = a[key + "_min"] / b[key + "_max"], a[key + "_max"] / b[key + "_min"]
  return f"{a[key] / b[key]:.2f}x (worst..best pairing of the spreads {low:.2f}..{high:.2f})"


def main(argv=None) -> dict:
  """Runs the benchmark and prints its tables; returns {"tables": {server: {(prompts, concurrency): median cell}},
  "hf_ratios": {(prompts, concurrency): [ours / HF req/s per repeat]}, "ceilings": {the same: [its ceiling per
  repeat]}, "ratios": {label: text}}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=16, help="requests per run (at least 2 x concurrency)")
  parser.add_argument("--concurrency", default="1,8,32,128")
  parser.add_argument("--prompts", default="1,16,256")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--whole_batch_too", action="store_true")
  parser.add_argument("--hf_too", action="store_true")
  parser.add_argument(
    "--hf_threads", type=int, default=0, help="torch threads for HF (0: one per core; 1 suffers less on a busy box)"
  )
  parser.add_argument(
    "--no_http", action="store_true", help="the server built in this process, requests submitted to its batcher"
  )
  parser.add_argument("--output", default=None, help="write the tables as JSON here")
  args = parser.parse_args(argv)
  if args.no_http and args.whole_batch_too:
    parser.error("--whole_batch_too starts a second server process; run it without --no_http.")
  concurrency = [int(c) for c in args.concurrency.split(",")]
  distinct = [int(p) for p in args.prompts.split(",")]
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
  import test_serve  # the server start/stop the tests use

  test_serve.SHAPES.clear()
  test_serve.SHAPES.update(SHAPES)
  test_serve.MAX_LIBRARY_BYTES, test_serve.DEVICE_CACHE_BYTES = 1 << 30, 1 << 30  # the server's defaults' order
  prompts = np.random.default_rng(0).normal(size=(max(distinct), PROMPT_LENGTH, 256)).astype(np.float32)
  results: dict[str, dict] = {}
  hf_ratios: dict[tuple[int, int], list[float]] = {}
  ceilings: dict[tuple[int, int], list[float]] = {}
  floor = admission_floor(prompts[0]) if args.hf_too and 32 in concurrency else None
  with tempfile.TemporaryDirectory() as tmp:
    if args.no_http:
      ids = [f"p{i}" for i in range(len(prompts))]
      hf = HfPeftProcess(prompts, ids, Path(tmp), args.hf_threads) if args.hf_too and 32 in concurrency else None
      server = _in_process_server(prompts, ids)
      try:
        results["continuous"], hf_table, hf_ratios, ceilings = bench(
          server, ids, args, distinct, concurrency, hf, floor
        )
        if hf is not None:
          results["hf_peft"] = hf_table
      finally:
        server.batcher.stop()
        if hf is not None:
          hf.close()
      return _report(results, hf_ratios, ceilings, args, concurrency, distinct)
    library = Path(tmp) / "library"
    library.mkdir()
    process, url = test_serve.start_server(library, Path(tmp) / "continuous.log")
    try:
      ids = _upload(url, prompts)
      hf = HfPeft(prompts, ids, Path(tmp), args.hf_threads) if args.hf_too and 32 in concurrency else None
      results["continuous"], hf_table, hf_ratios, ceilings = bench(url, ids, args, distinct, concurrency, hf, floor)
      if hf is not None:
        results["hf_peft"] = hf_table
    finally:
      test_serve.stop_server(process)
    if args.whole_batch_too:
      process, url = test_serve.start_server(library, Path(tmp) / "whole_batch.log", ("--whole_batch",))
      try:
        _upload(url, prompts[:1])
        results["whole_batch"] = bench(url, ids, args, [1], [c for c in concurrency if c >= 32])[0]
      finally:
        test_serve.stop_server(process)
  return _report(results, hf_ratios, ceilings, args, concurrency, distinct)


def _report(results: dict, hf_ratios: dict, ceilings: dict, args, concurrency: list[int], distinct: list[int]) -> dict:
  """Prints the tables and ratios (module docstring) and returns main's result."""
  cont = results["continuous"]
  print("\n| distinct prompts, concurrency | req/s median (min..max) | generated tokens/s (min..max) | p50 s | p99 s |")
  print("|---|---|---|---|---|")
  for name, table in results.items():
    for (p, c), cell in table.items():
      print(_cell_row(f"{name}: {p}, {c}", cell))
  ratios = {}
  many = max(distinct)
  for c in concurrency:
    if many > 1:
      ratios[f"mixed ({many} prompts) vs shared, concurrency {c}, req/s"] = _ratio(cont[(many, c)], cont[(1, c)])
  if 32 in concurrency and 1 in concurrency:
    ratios["concurrency 32 vs 1 (one prompt), req/s"] = _ratio(cont[(1, 32)], cont[(1, 1)])
  for (p, c), cell in results.get("whole_batch", {}).items():
    ratios[f"continuous vs whole-batch, concurrency {c}, tokens/s"] = _ratio(cont[(p, c)], cell, "tokens_per_s")
  for (p, c), per_repeat in hf_ratios.items():
    s = sorted(per_repeat)
    how = ", no HTTP" if args.no_http else ""
    ratios[f"ours (concurrency {c}{how}) vs HF generate + PEFT, {p} prompts, req/s"] = (
      f"{statistics.median(s):.2f}x (per repeat, interleaved: {s[0]:.2f}-{s[-1]:.2f})"
    )
  for (p, c), per_repeat in ceilings.items():
    s = sorted(per_repeat)
    label = f"its ceiling: the same runs (concurrency {c}, {p} prompts) with each admission at its floor, no padding"
    ratios[label + " at the matmul roof"] = f"{statistics.median(s):.2f}x (per repeat: {s[0]:.2f}-{s[-1]:.2f})"
  print(
    "\n| server: distinct prompts, concurrency | in the model (share of elapsed) | in steps | in admissions | "
    "steps / request | admissions / request | rows / step | ms / step | ms / admission |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for name, table in results.items():
    if name == "hf_peft":
      continue
    for (p, c), cell in table.items():
      print(
        f"| {name}: {p}, {c} | {cell['engine_share']:.0%} | {cell['step_share']:.0%} | {cell['admit_share']:.0%} | "
        f"{cell['steps_per_request']:.2f} | {cell['admissions_per_request']:.2f} | {cell['rows_per_step']:.1f} | "
        f"{cell['step_ms']:.1f} | {cell['admit_ms']:.1f} |"
      )
  for (p, c), cell in results.get("hf_peft", {}).items():
    print(
      f"| HF generate + PEFT: {p}, {c} (encoder + first step: the same batches with max_new_tokens=1) | 100% | "
      f"{1 - cell['first_token_share']:.0%} | {cell['first_token_share']:.0%} | {cell['steps_per_request']:.2f} | "
      f"{1 / HF_BATCH:.2f} | {HF_BATCH} | {cell['step_ms']:.1f} | {cell['first_token_ms'] * HF_BATCH:.1f} |"
    )
  print()
  for name, value in ratios.items():
    print(f"- {name}: {value}")
  if args.output:
    tables = {name: {str(k): v for k, v in table.items()} for name, table in results.items()}
    Path(args.output).write_text(json.dumps({"ratios": ratios, "tables": tables}, indent=1))
  return {"tables": results, "hf_ratios": hf_ratios, "ceilings": ceilings, "ratios": ratios}


if __name__ == "__main__":
  main()
