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
