"""Tokens/s of a forward+backward pass: our T5 (JAX, jit) versus the Hugging Face PyTorch T5.

Same architecture (T5 1.1 small by default), same batch, same lengths, same
thread count, random weights, float32. Prints both throughputs and the ratio
(ours / Hugging Face). Full model gradients on both sides: this measures the
backbone, not prompt tuning (see train_step.py for that).

    python benchmarks/forward_backward.py [--size t5_1_1_small] [--batch 8] [--inputs 128] [--targets 32]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import hf_t5, seconds_per_call


def bench_ours(size: str, batch, enc, dec, targets, warmup, iters) -> float:
  import jax
  import jax.numpy as jnp

  import prompt_tuning as pt

  config = pt.get_config(size, dropout_rate=0.0)
  params = pt.init_params(config, jax.random.key(0))
  model = pt.T5(config)

  def loss(p):
    logits = model.apply({"params": p}, enc, dec, targets)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

  step = jax.jit(jax.value_and_grad(loss))
  return seconds_per_call(lambda: jax.block_until_ready(step(params)), warmup, iters)


def bench_hf(size: str, enc, dec, targets, warmup, iters, threads: int) -> float:
  import torch

  model = hf_t5(size, threads).train()
  enc_t, dec_t, tgt_t = (torch.tensor(np.asarray(x)) for x in (enc, dec, targets))
  mask = (enc_t > 0).long()

  def step():
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=enc_t, attention_mask=mask, decoder_input_ids=dec_t).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_t.reshape(-1).long())
    loss.backward()

  return seconds_per_call(step, warmup, iters)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="t5_1_1_small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--targets", type=int, default=32)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args()
  threads = os.cpu_count() or 1

  rng = np.random.default_rng(0)
  enc = rng.integers(2, 32000, (args.batch, args.inputs)).astype(np.int32)
  targets = rng.integers(2, 32000, (args.batch, args.targets)).astype(np.int32)
  dec = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  tokens = args.batch * (args.inputs + args.targets)

  ours = bench_ours(args.size, args.batch, enc, dec, targets, args.warmup, args.iters)
  hf = bench_hf(args.size, enc, dec, targets, args.warmup, args.iters, threads)
  print(f"config {args.size}, batch {args.batch}, lengths {args.inputs}+{args.targets}, {threads} threads, float32")
  print(f"ours (JAX, jit)      : {tokens / ours:10.1f} tokens/s  ({ours * 1e3:.1f} ms/step)")
  print(f"Hugging Face PyTorch : {tokens / hf:10.1f} tokens/s  ({hf * 1e3:.1f} ms/step)")
  print(f"ratio ours / HF      : {hf / ours:.2f}x")


if __name__ == "__main__":
  main()
