"""What the benchmarks share: timing, and the Hugging Face PyTorch T5 equal to one of our configs."""

from __future__ import annotations

import time


def seconds_per_call(fn, warmup: int, iters: int) -> float:
  """Mean wall time of `fn()` after `warmup` untimed calls (compilation, caches)."""
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def hf_t5(size: str, threads: int):
  """A random Hugging Face T5ForConditionalGeneration with our named size's architecture, no dropout."""
  import torch
  import transformers

  import prompt_tuning as pt
  from prompt_tuning.checkpoints.huggingface import hf_config_from

  torch.set_num_threads(threads)
  # The same architecture, through the mapping our Hugging Face writer uses.
  config = transformers.T5Config(**hf_config_from(pt.get_config(size, dropout_rate=0.0), "float32"))
  return transformers.T5ForConditionalGeneration(config)


def matmul_roof(size: int = 2048, dtype: str = "float32", repeats: int = 10) -> tuple[float, float]:
  """(best, median) FLOP/s of a jitted [size, size] @ [size, size] matmul on JAX's default device: the roof a
  train step's FLOP/s is read against (XLA CPU's own matmul, not the chip's datasheet peak)."""
  import statistics

  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  flops = 2.0 * size**3
  return flops / min(times), flops / statistics.median(times)
