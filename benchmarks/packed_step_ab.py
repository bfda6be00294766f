"""The packed train step with the relative position bias as the project computes it (a one-hot contraction)
against a gather along the buckets (the alternative tried after the profile; kept here), in one process,
interleaved, on the BoolQ-like packed step of `packing.py` / `profile_packed.py`.

    cd benchmarks && PYTHONPATH=.. python packed_step_ab.py [--repeats 3] [--steps 3] [--size t5_1_1_small]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from packing import Ours, batches, boolq_examples


def gather_bias_class():
  """RelativePositionBias computing its bias with a gather along the buckets instead of a one-hot contraction."""
  import flax.linen as nn
  import jax.numpy as jnp

  from prompt_tuning.models import layers

  class GatherRelativePositionBias(layers.RelativePositionBias):
    @nn.compact
    def __call__(self, query_positions, key_positions):
      rel_embedding = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(layers.normal_init(1.0), ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets),
        self.param_dtype,
      )
      relative = key_positions[None, :] - query_positions[:, None]
      buckets = layers.relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
      return jnp.take(rel_embedding.astype(jnp.float32), buckets, axis=1)[None]  # [1, heads, q, k]

  return GatherRelativePositionBias


def main():
  from prompt_tuning.models import t5

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--size", default="t5_1_1_small")
  args = parser.parse_args()
  import prompt_tuning as pt

  vocab = min(32000, pt.get_config(args.size).vocab_size)
  examples = boolq_examples(400, np.random.default_rng(0), vocab=vocab)
  packed = batches(examples, {"inputs": 512, "targets": 16}, 4, True, 100)
  one_hot = Ours(args.size, 100, packed[:4])
  current = t5.RelativePositionBias
  t5.RelativePositionBias = gather_bias_class()
  try:
    gather = Ours(args.size, 100, packed[:4])
  finally:
    t5.RelativePositionBias = current
  runners = {"one-hot (the project's)": one_hot, "gather (tried)": gather}
  for name, runner in runners.items():
    print(f"{name}: temporaries {runner.compiled.memory_analysis().temp_size_in_bytes / 2**20:.1f} MiB (XLA)")
  for runner in runners.values():
    runner.step()
  seconds = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, runner in runners.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        runner.step()
      seconds[name].append((time.perf_counter() - start) / args.steps)
  for name, values in seconds.items():
    print(f"{name}: {statistics.median(values):.3f} s/step ({min(values):.3f}-{max(values):.3f})")
  ratios = [b / a for b, a in zip(seconds["one-hot (the project's)"], seconds["gather (tried)"])]
  print(
    f"one-hot / gather step time, per repeat: {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
  )


if __name__ == "__main__":
  main()
