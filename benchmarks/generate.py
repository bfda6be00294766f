"""Greedy decoding with a soft prompt, ours vs Hugging Face generate + PEFT, on whatever JAX and torch run on here.

    PYTHONPATH=. nice -n 19 python benchmarks/generate.py [--size t5_1_1_small] [--batch 8] [--inputs 128]
        [--prompt 20] [--new_tokens 32] [--repeats 3] [--breakdown]

The decoding part of `benchmarks/accelerator.py` (its `OursDecode` and `HfDecode`, measured the same way) at the
sizes of the CPU row of RESULTS.md: `prompt_tuning.decoding.generate` of random full-length token rows through a
random soft prompt against `PeftModel.generate` with PEFT prompt tuning of the same architecture, float32, both
forced to generate exactly `--new_tokens` tokens (our EOS id set to -1, HF's min_new_tokens). The two run
interleaved, one untimed call each first; the ratio (ours / HF throughput) is taken per repeat and reported as
median (min-max). Random weights: nothing is downloaded.

`--breakdown` measures instead where each side's time goes, all interleaved in one process, per repeat: ours'
jitted encoder alone, the encoder with the cross-attention keys and values (`T5.init_cache`: what `generate` runs
before its loop) and the decode loop alone (`decoding._decode_loop` on that cache), beside the whole `generate`
(its tokens checked equal to the parts'); HF's encoder (`get_encoder()` on PEFT's prompt + input embeddings), its
cross-attention key/value projections (HF makes them in the first decoder step) and the whole `generate`; and the
box's floors: the float32 matmul roof (`common.matmul_roof`) for the encoder's XLA-counted FLOPs, and the memory
bandwidth (a 256 MiB copy, numpy and jitted JAX, read + write counted) for a decode step, which must at least read
the decoder's per-step weights (self-attention, cross-attention query/out, MLP), the logits matrix and the caches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # accelerator.py, common.py
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> dict:
  from accelerator import HfDecode, OursDecode, Scale, interleaved, spread

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="t5_1_1_small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--prompt", type=int, default=20)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--breakdown", action="store_true", help="where each side's time goes (module docstring)")
  parser.add_argument(
    "--hf_threads", type=int, default=0, help="torch threads for HF (0: one per core; 1 suffers less on a busy box)"
  )
  args = parser.parse_args(argv)
  scale = Scale(
    decode_sizes=(args.size,),
    decode_batches=(args.batch,),
    decode_inputs=args.inputs,
    decode_prompt=args.prompt,
    new_tokens=args.new_tokens,
    dtype="float32",
  )
  ours, hf = OursDecode(args.size, args.batch, scale), HfDecode(args.size, args.batch, scale)
  if args.hf_threads:
    hf.torch.set_num_threads(args.hf_threads)
  if args.breakdown:
    return breakdown(ours, hf, args)
  runners = {"ours": ours, "hf": hf}
  seconds = interleaved(runners, args.repeats, 1)
  result = {name: spread([runners[name].tokens / s for s in seconds[name]]) for name in runners}  # generated tokens/s
  result["ratio"] = spread([h / o for o, h in zip(seconds["ours"], seconds["hf"])])
  print(f"{args.size}, batch {args.batch}, {args.inputs} inputs + prompt {args.prompt}, {args.new_tokens} new tokens")
  for name, label in (("ours", "ours, tokens/s"), ("hf", "HF + PEFT, tokens/s"), ("ratio", "ours / HF + PEFT")):
    s = result[name]
    print(f"| {label} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) |")
  return result


def bandwidth(mib: int = 256) -> float:
  """Bytes/s of the faster of a numpy copy and a jitted JAX add over `mib` MiB of float32 (read + write counted),
  best of 3 each."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from common import seconds_per_call

  src = np.ones(mib * 2**18, np.float32)
  dst = np.empty_like(src)
  x = jnp.asarray(src)
  add = jax.jit(lambda x: x + 1.0)
  add(x).block_until_ready()
  best = min(
    min(seconds_per_call(lambda: np.copyto(dst, src), warmup=0, iters=1) for _ in range(3)),
    min(seconds_per_call(lambda: add(x).block_until_ready(), warmup=0, iters=1) for _ in range(3)),
  )
  return 2 * src.nbytes / best


def _ours_parts(ours):
  """(encoder, encoder + cross K/V cache, loop on a cache) as jitted calls of `decoding`'s own pieces, and the
  encoder's and the encoder + cache's XLA-counted FLOPs."""
  import jax

  from prompt_tuning import decoding
  from prompt_tuning.models import adapters as sites
  from prompt_tuning.models.t5 import T5

  model, batch, settings = T5(ours.config), ours.inputs.shape[0], ours.settings
  adapters = sites.from_keywords(ours.prompt, None, None, None)

  def encoder(params, tokens, adapters):
    return model.apply({"params": params}, tokens, adapters, prompt_combination="prefix", method=T5.encode)

  def with_cache(params, tokens, adapters):
    encoded, mask = encoder(params, tokens, adapters)
    return decoding._init_cache(model, params, encoded, mask, batch, settings.max_decode_length, adapters), mask

  def loop(params, cache, mask, adapters, rng):
    step = decoding._step_fn(model, params, mask, adapters)
    return decoding._decode_loop(step, cache, batch, settings, rng, False, None)

  args = (ours.params, ours.inputs, adapters)
  flops = []
  for fn in (encoder, with_cache):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    flops.append(float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0)))
  # The loop's cache is not donated (no output could reuse it): XLA copies it into the loop's state once per call.
  encoder, with_cache, loop = jax.jit(encoder), jax.jit(with_cache), jax.jit(loop)
  rng = jax.random.key(0)

  def run_encoder():
    jax.block_until_ready(encoder(*args))

  def run_loop():
    cache, mask = jax.block_until_ready(with_cache(*args))
    start = time.perf_counter()
    tokens = loop(ours.params, cache, mask, adapters, rng).tokens.block_until_ready()
    return time.perf_counter() - start, tokens

  return run_encoder, lambda: jax.block_until_ready(with_cache(*args)), run_loop, flops


def _hf_parts(hf):
  """(encoder, cross-attention K/V projections) of HF + PEFT's generate, run alone on the same batch."""
  torch = hf.torch
  model = hf.model
  with torch.no_grad():
    embeds = torch.cat([model.get_prompt(batch_size=hf.ids.shape[0]), model.word_embeddings(hf.ids)], dim=1)
  mask = torch.ones(embeds.shape[:2], dtype=torch.long)
  base = model.get_base_model()
  encoder = base.get_encoder()
  with torch.no_grad():
    encoded = encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

  def run_encoder():
    with torch.no_grad():
      encoder(inputs_embeds=embeds, attention_mask=mask)

  def run_cross_kv():
    with torch.no_grad():
      for block in base.decoder.block:
        attention = block.layer[1].EncDecAttention
        attention.k(encoded), attention.v(encoded)

  return run_encoder, run_cross_kv


def _step_bytes(ours) -> dict[str, int]:
  """Bytes a decode step of ours must read at least once: the decoder's per-step weights (the cross-attention's
  key/value kernels run only before the loop), the logits matrix, and the self- and cross-attention caches."""
  import jax

  config, (batch, inputs), prompt = ours.config, ours.inputs.shape, ours.prompt.shape[0]
  decoder = ours.params["decoder"]
  weights = sum(x.nbytes for x in jax.tree.leaves(decoder))
  weights -= sum(
    decoder[layer]["encoder_decoder_attention"][kv]["kernel"].nbytes
    for layer in decoder
    if layer.startswith("layers_")
    for kv in ("key", "value")
  )
  logits = decoder["logits_dense"]["kernel"].nbytes if "logits_dense" in decoder else 0
  width = config.num_heads * config.head_dim * 4 * 2 * config.num_decoder_layers  # K and V, float32, every layer
  return {
    "decoder weights": weights - logits,
    "logits matrix": logits,
    "cross-attention K/V cache": batch * (inputs + prompt) * width,
    "self-attention cache": batch * ours.settings.max_decode_length * width,
  }


def breakdown(ours, hf, args) -> dict:
  """Where `generate`'s time goes, each side (module docstring); prints a markdown table, returns per repeat."""
  import numpy as np
  from accelerator import spread
  from common import matmul_roof, seconds_per_call

  ours_encoder, ours_cache, ours_loop, (encoder_flops, cache_flops) = _ours_parts(ours)
  hf_encoder, hf_cross_kv = _hf_parts(hf)
  step_bytes = _step_bytes(ours)
  for fn in (ours_encoder, ours_cache, ours_loop, ours.step, hf_encoder, hf_cross_kv, hf.step):  # warm-up
    fn()
  expected = np.asarray(ours.generate().tokens)
  parts = {
    k: []
    for k in (
      "roof",
      "bandwidth",
      "ours encoder",
      "ours encoder + cross K/V",
      "ours loop",
      "ours generate",
      "hf encoder",
      "hf cross K/V",
      "hf generate",
    )
  }
  for _ in range(args.repeats):
    parts["roof"].append(matmul_roof(repeats=5)[0])
    parts["bandwidth"].append(bandwidth())
    parts["ours encoder"].append(seconds_per_call(ours_encoder, warmup=0, iters=1))
    parts["ours encoder + cross K/V"].append(seconds_per_call(ours_cache, warmup=0, iters=1))
    seconds, tokens = ours_loop()
    assert (np.asarray(tokens) == expected).all(), "the loop alone decoded other tokens than generate"
    parts["ours loop"].append(seconds)
    parts["ours generate"].append(seconds_per_call(ours.step, warmup=0, iters=1))
    parts["hf encoder"].append(seconds_per_call(hf_encoder, warmup=0, iters=1))
    parts["hf cross K/V"].append(seconds_per_call(hf_cross_kv, warmup=0, iters=1))
    parts["hf generate"].append(seconds_per_call(hf.step, warmup=0, iters=1))
  n, total_bytes = args.new_tokens, sum(step_bytes.values())
  per_repeat = {
    "ours step ms": [s / n * 1e3 for s in parts["ours loop"]],
    "hf step ms (generate - encoder - cross K/V)": [
      (g - e - kv) / n * 1e3 for g, e, kv in zip(parts["hf generate"], parts["hf encoder"], parts["hf cross K/V"])
    ],
    "step floor ms (bytes / bandwidth)": [total_bytes / b * 1e3 for b in parts["bandwidth"]],
    "ours encoder share of roof": [encoder_flops / s / r for s, r in zip(parts["ours encoder"], parts["roof"])],
    "hf encoder share of roof": [encoder_flops / s / r for s, r in zip(parts["hf encoder"], parts["roof"])],
    "ours generate - encoder+K/V - loop, ms": [
      (g - c - lp) * 1e3
      for g, c, lp in zip(parts["ours generate"], parts["ours encoder + cross K/V"], parts["ours loop"])
    ],
  }
  result = {
    "parts_s": parts,
    "derived": per_repeat,
    "step_bytes": step_bytes,
    "encoder_flops": encoder_flops,
    "encoder_and_cross_kv_flops": cache_flops,
  }
  fmt = lambda s, f=1.0: "{:.1f} ({:.1f}-{:.1f})".format(*(s[k] * f for k in ("median", "min", "max")))  # noqa: E731
  print(
    f"\n{args.size}, batch {args.batch}, {args.inputs} inputs + prompt {args.prompt}, {args.new_tokens} new tokens, "
    f"{args.repeats} repeats interleaved; encoder {encoder_flops / 1e9:.2f} GFLOP (with cross K/V "
    f"{cache_flops / 1e9:.2f}); a step reads at least {total_bytes / 2**20:.1f} MiB "
    + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in step_bytes.items())
  )
  print("| part | ms, median (min-max) |\n| --- | --- |")
  for name, values in parts.items():
    if name == "roof":
      print(f"| float32 matmul roof, GFLOP/s | {fmt(spread(values), 1e-9)} |")
    elif name == "bandwidth":
      print(f"| memory bandwidth (copy, read + write), GB/s | {fmt(spread(values), 1e-9)} |")
    else:
      print(f"| {name} | {fmt(spread(values), 1e3)} |")
  for name, values in per_repeat.items():
    print(f"| {name} | {fmt(spread(values), 100.0 if 'share' in name else 1.0)}{' %' if 'share' in name else ''} |")
  return result


if __name__ == "__main__":
  main()
