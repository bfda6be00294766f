"""The planner's temporaries (`prompt_tuning.plan`) against the measured peak of a real CPU train step.

The step: `run.jit_train_step` (Adafactor, dropout on) on concrete arrays of the planned shapes; its peak host memory
above the resident arrays is Linux's VmHWM, reset before each step (/proc/self/clear_refs), the median of three.
Pass `rbg` to key dropout with RngBitGenerator instead of threefry (what training uses).

    PYTHONPATH=. python benchmarks/plan_vs_measured.py SIZE BATCH INPUTS TARGETS PROMPT_LENGTH MAX_LAYERS [rbg]
    PYTHONPATH=. python benchmarks/plan_vs_measured.py t5_1_1_small 8 256 16 20 0
"""

import gc
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import partitioning, plan, prompts, run
from prompt_tuning.methods import Prompt


def rss():
  fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
  return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak():
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def main(size, batch, inputs, targets, prompt_length, max_layers, remat="none"):
  cfg = run.RunConfig(
    model_dir="x",
    initial_checkpoint_path=None,
    mixture_or_task_name="x",
    task_feature_lengths={"inputs": inputs, "targets": targets},
    model_size=size,
    prompt=Prompt(prompt_length, prompts.random_uniform()),
    batch_size=batch,
    remat_policy=remat,
    dropout_rate=0.1,
  )
  planner = plan.Planner(cfg, full_compile_max_layers=max_layers)
  t = time.perf_counter()
  est = planner.estimate(planner.base_settings())
  plan_s = time.perf_counter() - t
  mesh = partitioning.make_mesh(1, (1, 1))
  config = run.with_run_settings(cfg, run.planned_config(cfg))
  tuned, state, frozen, optimizer = run.abstract_training(cfg, config, mesh)
  make = lambda x: jax.device_put(
    jnp.full(x.shape, 0.01, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros(x.shape, x.dtype),
    x.sharding,
  )
  state, frozen = jax.tree.map(make, state), jax.tree.map(make, frozen)
  rng = np.random.default_rng(0)
  batch_arrays = {
    k: rng.integers(2, 1000, x.shape).astype(np.int32) for k, x in plan.abstract_batch(cfg, False, batch).items()
  }
  batch_arrays["decoder_loss_weights"] = np.ones_like(batch_arrays["decoder_loss_weights"])
  shardings = jax.tree.map(lambda x: x.sharding, (state, frozen))
  step = run.jit_train_step(cfg, tuned, optimizer, *shardings, mesh, None)
  key = plan._dropout_key() if "rbg" in sys.argv else jax.random.key(0)
  compiled = step.lower(state, frozen, batch_arrays, key).compile()
  xla_temp = compiled.memory_analysis().temp_size_in_bytes
  state, m = compiled(state, frozen, batch_arrays, key)
  jax.block_until_ready(m)  # warm
  gc.collect()
  deltas = []
  for _ in range(3):
    gc.collect()
    before, _ = rss()
    reset_peak()
    state, m = compiled(state, frozen, batch_arrays, key)
    jax.block_until_ready(m)
    _, peak = rss()
    deltas.append(peak - before)
  measured = sorted(deltas)[1]
  print(
    json.dumps(
      dict(
        size=size,
        batch=batch,
        inputs=inputs,
        remat=remat,
        predicted_temp=est.memory.temporaries,
        xla_whole_temp=xla_temp,
        measured_step_peak=measured,
        deltas=deltas,
        method=est.temporaries_method,
        error=(est.memory.temporaries - measured) / measured,
        plan_s=plan_s,
      )
    )
  )


if __name__ == "__main__":
  a = sys.argv[1:]
  main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), *[x for x in a[6:7] if x != "rbg"])
