"""The server's decoder step against a minimal one: how far `Engine.step` is from the floor of a step on XLA here.

    PYTHONPATH=. python benchmarks/serve_step.py [--running 20] [--repeats 5] [--calls 10]

Ours: `Engine.step` of the demo server that `serve.py` benchmarks (its shapes: 32 slots, step buckets 4, 8, 16,
24), `--running` slots running (20: the mean of the serve benchmark's steps, in the bucket of 24), 8 steps a call,
greedy, one prompt; the slots are re-admitted (untimed) before each call so every step runs at positions 0-7.

Minimal: a hand-written T5 1.1 decode step at the same sizes (the demo model's widths, heads, layers and
vocabulary) over exactly the bucket's rows (and, beside it, over exactly the running rows: no bucket), with the
cross-attention keys and values and the self-attention cache of just those rows (no slots to skip, nothing
gathered or written back), in the same 8-step loop, and nothing else: no relative position bias, no adapters, no
padding masks, no sampling or log-probabilities, the argmax token fed back. Random weights of the demo's shapes
(the time does not depend on the values).

The three run interleaved, `--calls` calls each per repeat; ms per step, median (min-max), and ours / minimal per
repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

STEPS = 8  # steps a call


def _rms(x, scale):
  import jax
  import jax.numpy as jnp

  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def minimal(config, rows: int, encoder_length: int, cache_length: int):
  """A jitted call of STEPS minimal decode steps over `rows` rows (module docstring), and its arguments."""
  import jax
  import jax.numpy as jnp

  d, h, dh, f = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
  keys = iter(jax.random.split(jax.random.key(0), 64))

  def w(*shape):
    return jax.random.normal(next(keys), shape, jnp.float32) * 0.02

  layer_shapes = {"q": (d, h * dh), "k": (d, h * dh), "v": (d, h * dh), "o": (h * dh, d), "cq": (d, h * dh)}
  layer_shapes |= {"co": (h * dh, d), "wi0": (d, f), "wi1": (d, f), "wo": (f, d)}
  layers = [{name: w(*shape) for name, shape in layer_shapes.items()} for _ in range(config.num_decoder_layers)]
  for layer in layers:
    layer |= {"n1": jnp.ones(d), "n2": jnp.ones(d), "n3": jnp.ones(d)}
  params = {"layers": layers, "embed": w(config.vocab_size, d), "head": w(d, config.vocab_size), "norm": jnp.ones(d)}
  n = config.num_decoder_layers
  cache = {
    "self_k": [jnp.zeros((rows, h, cache_length, dh)) for _ in range(n)],
    "self_v": [jnp.zeros((rows, h, cache_length, dh)) for _ in range(n)],
    "cross_k": [w(rows, h, encoder_length, dh) for _ in range(n)],
    "cross_v": [w(rows, h, encoder_length, dh) for _ in range(n)],
  }

  def attend(q, k, v, bias=0.0):
    weights = jax.nn.softmax(jnp.einsum("rhd,rhld->rhl", q, k) + bias, axis=-1)
    return jnp.einsum("rhl,rhld->rhd", weights, v).reshape(rows, h * dh)

  def step(params, cache, token, position):
    x = params["embed"][token]
    index = jnp.arange(rows)
    causal = jnp.where(jnp.arange(cache_length)[None, None, :] <= position[:, None, None], 0.0, -1e9)
    for i, p in enumerate(params["layers"]):
      y = _rms(x, p["n1"])
      q, k, v = ((y @ p[name]).reshape(rows, h, dh) for name in ("q", "k", "v"))
      cache["self_k"][i] = cache["self_k"][i].at[index, :, position].set(k)
      cache["self_v"][i] = cache["self_v"][i].at[index, :, position].set(v)
      x = x + attend(q, cache["self_k"][i], cache["self_v"][i], causal) @ p["o"]
      q = (_rms(x, p["n2"]) @ p["cq"]).reshape(rows, h, dh)
      x = x + attend(q, cache["cross_k"][i], cache["cross_v"][i]) @ p["co"]
      y = _rms(x, p["n3"])
      x = x + (jax.nn.gelu(y @ p["wi0"]) * (y @ p["wi1"])) @ p["wo"]
    return jnp.argmax(_rms(x, params["norm"]) @ params["head"], axis=-1).astype(jnp.int32), cache

  @jax.jit
  def run(params, cache, token, position):
    def body(_, carry):
      cache, token, position = carry
      token, cache = step(params, cache, token, position)
      return cache, token, position + 1

    return jax.lax.fori_loop(0, STEPS, body, (cache, token, position))

  return run, (params, cache, jnp.zeros(rows, jnp.int32), jnp.zeros(rows, jnp.int32))


def ours(running: int):
  """A call of STEPS `Engine.step`s of the demo server over `running` slots (re-admitted, untimed, before each),
  and the engine."""
  import jax
  import serve

  prompt = np.random.default_rng(0).normal(size=(1, serve.PROMPT_LENGTH, 256)).astype(np.float32)
  server = serve._in_process_server(prompt, ["p0"], start=False)  # the server serve.py --no_http measures
  engine = server.engine
  vectors = engine.row_vectors(server.library.get("p0"))
  tokens = np.random.default_rng(1).integers(2, engine.config.vocab_size, (running, 16)).astype(np.int32)
  settings = {"max_length": np.full(running, engine.shapes.max_decode_length, np.int32)}
  settings |= {"temperature": np.zeros(running, np.float32), "top_k": np.zeros(running, np.int32)}
  settings["top_p"] = np.ones(running, np.float32)
  slots, rng = list(range(running)), jax.random.key(0)
  state = {"state": engine.init_state()}

  def admit():
    state["state"] = jax.block_until_ready(engine.admit(state["state"], slots, tokens, [vectors] * running, settings))

  def call():
    state["state"], _, out = engine.step(state["state"], rng, STEPS, False, slots)
    assert len(out["token"]) == STEPS

  return admit, call, engine


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--running", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--calls", type=int, default=10)
  args = parser.parse_args(argv)
  import jax

  from prompt_tuning.serve.engine import bucket

  admit, call, engine = ours(args.running)
  width = bucket(args.running, engine.shapes.step_sizes)
  minimal_runs = {
    name: minimal(engine.config, rows, engine.shapes.encoder_length, engine.shapes.max_decode_length)
    for name, rows in (("minimal", width), ("minimal, unpadded", args.running))
  }
  for run, inputs in minimal_runs.values():
    jax.block_until_ready(run(*inputs))
  admit()
  call()
  times = {"ours": [], "minimal": [], "minimal, unpadded": []}
  for _ in range(args.repeats):
    spent = 0.0
    for _ in range(args.calls):
      admit()
      start = time.perf_counter()
      call()
      spent += time.perf_counter() - start
    times["ours"].append(1e3 * spent / (args.calls * STEPS))
    for name, (run, inputs) in minimal_runs.items():
      start = time.perf_counter()
      for _ in range(args.calls):
        jax.block_until_ready(run(*inputs))
      times[name].append(1e3 * (time.perf_counter() - start) / (args.calls * STEPS))
  ratios = {name: [o / m for o, m in zip(times["ours"], times[name])] for name in minimal_runs}

  def cell(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

  command = "PYTHONPATH=. python benchmarks/serve_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
  print(f"\n{command}\n{args.running} running slots in the step bucket of {width}, {STEPS} steps a call")
  print("| step | ms a step | ours / this, per repeat |\n| --- | --- | --- |")
  print(f"| ours (`Engine.step`), {args.running} slots in the bucket of {width} | {cell(times['ours'])} | - |")
  print(f"| minimal, {width} rows | {cell(times['minimal'])} | {cell(ratios['minimal'])}x |")
  unpadded = "minimal, unpadded"
  print(f"| minimal, {args.running} rows (no bucket) | {cell(times[unpadded])} | {cell(ratios[unpadded])}x |")
  return {"times": times, "ratios": ratios, "width": width}


if __name__ == "__main__":
  main()
