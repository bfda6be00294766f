"""Train-step cost: prompt tuning vs model tuning (ours), and ours vs PEFT prompt tuning (PyTorch).

One run, one configuration (T5 1.1 small by default), random weights, float32:
1. step time and compiled peak memory of our prompt-tuning step vs our
   model-tuning step (same batch; ratios);
2. tokens/s of our prompt-tuning step vs PEFT prompt tuning on the equivalent
   Hugging Face PyTorch T5 (same prompt length, batch, lengths, threads; ratio).

    python benchmarks/train_step.py [--size t5_1_1_small] [--batch 8] [--inputs 128] [--targets 16] [--prompt 20]

Peak memory of our steps is XLA's compiled estimate (arguments + outputs +
temporaries, minus donated aliases); PyTorch's is not comparable that way, so
only throughput is compared across frameworks.
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np
from common import hf_t5, seconds_per_call


def _batch(args):
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 32000, (args.batch, args.targets)).astype(np.int32)
  return {
    "encoder_input_tokens": rng.integers(2, 32000, (args.batch, args.inputs)).astype(np.int32),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones_like(targets, np.float32),
  }


def bench_ours(args, batch, pattern: str, prompt_length: int) -> tuple[float, int]:
  """(seconds per step, compiled peak bytes) of our jitted train step."""
  import jax

  import prompt_tuning as pt
  from prompt_tuning import optim, trainer
  from prompt_tuning.methods import Prompt
  from prompt_tuning.tuning import TunedT5

  config = pt.get_config(args.size, dropout_rate=0.0)
  backbone = pt.init_params(config, jax.random.key(0))
  uniform = lambda rng, emb, n: jax.random.uniform(rng, (n, emb.shape[1]), minval=-0.5, maxval=0.5)
  tuned = TunedT5(config, (Prompt(prompt_length, uniform),) if prompt_length else ())
  params = {"t5": backbone, **tuned.init_vectors(jax.random.key(1), backbone)}
  trainable, frozen = optim.partition(params, pattern)
  axes, _ = optim.partition(tuned.logical_axes(params), pattern)
  optimizer = optim.adafactor(logical_axes=axes)
  state = trainer.TrainState.create(trainable, optimizer)
  step = jax.jit(functools.partial(trainer.train_step, forward=tuned.forward, optimizer=optimizer), donate_argnums=(0,))
  rng = jax.random.key(0)
  compiled = step.lower(state, frozen, batch, rng).compile()
  memory = compiled.memory_analysis()
  peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
  peak -= memory.alias_size_in_bytes

  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], frozen, batch, rng)
    jax.block_until_ready(metrics["loss"])

  return seconds_per_call(run, args.warmup, args.iters), peak


def bench_peft(args, batch, threads: int) -> float:
  import peft
  import torch
  from transformers.optimization import Adafactor

  base = hf_t5(args.size, threads)
  model = peft.get_peft_model(
    base, peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=args.prompt)
  ).train()
  params = [p for p in model.parameters() if p.requires_grad]
  # Lester et al.'s Adafactor settings, through transformers' implementation.
  optimizer = Adafactor(params, lr=0.3, scale_parameter=False, relative_step=False, warmup_init=False, decay_rate=-0.8)
  enc = torch.tensor(batch["encoder_input_tokens"]).long()
  dec = torch.tensor(batch["decoder_input_tokens"]).long()
  tgt = torch.tensor(batch["decoder_target_tokens"]).long()

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = model(input_ids=enc, attention_mask=torch.ones_like(enc), decoder_input_ids=dec).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    loss.backward()
    optimizer.step()

  return seconds_per_call(step, args.warmup, args.iters)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="t5_1_1_small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--targets", type=int, default=16)
  parser.add_argument("--prompt", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args()
  threads = os.cpu_count() or 1
  batch = _batch(args)
  tokens = args.batch * (args.inputs + args.targets)

  prompt_time, prompt_peak = bench_ours(args, batch, r"^prompt$", args.prompt)
  model_time, model_peak = bench_ours(args, batch, r"^t5/", 0)
  peft_time = bench_peft(args, batch, threads)

  print(
    f"config {args.size}, batch {args.batch}, lengths {args.inputs}+{args.targets}, prompt {args.prompt}, "
    f"{threads} threads, float32"
  )
  print(
    f"ours, prompt tuning : {prompt_time * 1e3:9.1f} ms/step  {tokens / prompt_time:9.1f} tokens/s  "
    f"peak {prompt_peak / 2**20:8.1f} MiB"
  )
  print(
    f"ours, model tuning  : {model_time * 1e3:9.1f} ms/step  {tokens / model_time:9.1f} tokens/s  "
    f"peak {model_peak / 2**20:8.1f} MiB"
  )
  print(f"PEFT prompt tuning  : {peft_time * 1e3:9.1f} ms/step  {tokens / peft_time:9.1f} tokens/s")
  print(f"prompt / model tuning, step time : {prompt_time / model_time:.2f}x")
  print(f"prompt / model tuning, peak mem  : {prompt_peak / model_peak:.2f}x")
  print(f"ours / PEFT prompt tuning, tok/s : {peft_time / prompt_time:.2f}x")


if __name__ == "__main__":
  main()
