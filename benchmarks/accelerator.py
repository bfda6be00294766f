"""The accelerator benchmark, one command: train-step MFU, T5-XXL on one 80 GB GPU, decoding against HF + PEFT.

    PYTHONPATH=. python benchmarks/accelerator.py [--out_dir DIR] [--peak_tflops 989] [--repeats 3]
    PYTHONPATH=. python benchmarks/accelerator.py --dry_run   # the whole script on CPU, tiny configs, seconds

On a GPU or TPU it measures, with random weights (nothing is downloaded) and random full-length token rows:

1. XXL: T5 1.1 XXL prompt tuning (Lester et al.'s run: prompt 100, batch 32, 512 + 16 tokens, bfloat16 activations,
   dropout 0.1, Adafactor) on ONE device with the settings the memory planner (`prompt_tuning.plan`) says make it
   fit an 80 GB H100: every single change that fits ("alone"; else the first combination that fits), each measured
   in its own process, so the device's peak memory (`memory_stats()["peak_bytes_in_use"]`) is that run's alone:
   planned vs measured memory, step time, MFU. Measured first, before this process holds any device memory.
2. MFU of the train step at t5_1_1 base and large in bfloat16: prompt tuning (frozen backbone in bfloat16) and model
   tuning (float32 master weights, bfloat16 activations) beside it, all on every local device (data parallel),
   interleaved `--repeats` times.
3. Decoding: greedy tokens/s of `prompt_tuning.decoding.generate` with a soft prompt against Hugging Face
   `generate` through PEFT prompt tuning (torch, on the GPU when torch sees one), same sizes, batch, lengths and
   dtype; both forced to generate exactly `--new_tokens` tokens (our EOS id set to -1, HF's min_new_tokens), so the
   work is equal whatever the random weights emit.

Model FLOPs (the MFU's numerator) are the planner's analytic count (`plan.analytic_flops`): 2 FLOPs per weight per
token forward, per stack (encoder weights x encoder positions including the prompt, decoder weights x decoder
positions, cross-attention, the logits) plus attention, x2 for a frozen backbone (forward 2 + backward through the
activations 2: 4·N·tokens) and x3 for model tuning (6·N·tokens); a rematerialized forward is not counted (MFU, not
HFU). Beside it, the crude 4·N·D (6·N·D): N all backbone parameters, D all positions of the batch. The peak is the
device's bfloat16 dense FLOP/s from `plan.DEVICES`, found from JAX's device kind (`plan.device_name`), times the
devices used; `--peak_tflops` overrides it (per device).

Writes DIR/accelerator.json and DIR/accelerator.md (the tables). `--dry_run` runs every part on the CPU with tiny
configs and a pretend device whose memory is 60% of the tiny XXL stand-in's plan (so the planner's suggestions
run too); its figures mean nothing, it checks that the script works (tests/test_benchmarks_accelerator.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# This process must not reserve the device's memory: the XXL runs are child processes that need all of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DRY_RUN_DEVICE = "dry-run pretend device"


@dataclasses.dataclass(frozen=True)
class Scale:
  """The sizes and shapes a run measures."""

  train_sizes: tuple[str, ...] = ("t5_1_1_base", "t5_1_1_large")
  train_batch: int = 8  # rows per step (all devices); batch 32 of large without remat needs ~90 GB of activations
  inputs: int = 512
  targets: int = 16
  prompt: int = 100
  xxl_size: str = "t5_1_1_xxl"
  xxl_batch: int = 32
  xxl_device: str = "h100"
  decode_sizes: tuple[str, ...] = ("t5_1_1_base", "t5_1_1_large")
  decode_batches: tuple[int, ...] = (8, 32)
  decode_inputs: int = 128
  decode_prompt: int = 20
  new_tokens: int = 32
  steps: int = 5  # timed train steps per configuration and repeat
  dtype: str = "bfloat16"


DRY_RUN = Scale(
  train_sizes=("t5_1_1_demo_1m",),
  train_batch=4,
  inputs=16,
  targets=4,
  prompt=4,
  xxl_size="t5_1_1_demo_1m",
  xxl_batch=8,
  xxl_device=DRY_RUN_DEVICE,
  decode_sizes=("t5_1_1_demo_1m",),
  decode_batches=(2,),
  decode_inputs=8,
  decode_prompt=4,
  new_tokens=4,
  steps=1,
  dtype="float32",  # bfloat16 on a CPU only adds casts (and is slow in torch)
)


# ---------------------------------------------------------------------------------------------------------------------
# The train step, built as `prompt_tuning.run.build_training` builds it, from random weights and no task.


def run_config(size: str, method: str, scale: Scale, batch: int, **settings):
  """The RunConfig of a benchmark run: prompt tuning ("prompt") or model tuning ("model") of `size`."""
  from prompt_tuning import prompts
  from prompt_tuning.methods import Prompt
  from prompt_tuning.run import RunConfig

  return RunConfig(
    model_dir="(benchmark: nothing is written)",
    initial_checkpoint_path=None,
    mixture_or_task_name="(benchmark: random tokens)",
    task_feature_lengths={"inputs": scale.inputs, "targets": scale.targets},
    model_size=size,
    prompt=Prompt(scale.prompt, prompts.random_uniform()) if method == "prompt" else None,
    trainable_pattern=None if method == "prompt" else ".*",
    batch_size=batch,
    dropout_rate=0.1,
    activation_dtype=scale.dtype,
    frozen_dtype=scale.dtype if method == "prompt" else None,
    **settings,
  )


class TrainRunner:
  """A compiled train step of `cfg` over random weights and a random full-length batch, on `devices`."""

  def __init__(self, cfg, devices=None):
    import jax

    from prompt_tuning import optim, partitioning, plan, run, trainer
    from prompt_tuning.models.configs import get_config
    from prompt_tuning.models.t5 import init_params

    self.cfg = cfg
    mesh = partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape, devices=devices)
    config = run.with_run_settings(cfg, get_config(cfg.model_size))
    tuned = run.tuned_model(cfg, config)
    pattern = run.pattern_of(cfg, tuned)

    def init(key):
      backbone = jax.tree.map(lambda x: x.astype(config.parameter_dtype), init_params(config, key))
      return {"t5": backbone, **tuned.init_vectors(jax.random.fold_in(key, 1), backbone)}

    key = jax.random.key(cfg.seed)
    axes = tuned.logical_axes(jax.eval_shape(init, key))
    shardings = partitioning.shardings_for(axes, mesh, partitioning.logical_rules())
    trainable, self.frozen = optim.partition(jax.jit(init, out_shardings=shardings)(key), pattern)
    trainable_axes, _ = optim.partition(axes, pattern)
    optimizer = run.make_optimizer(cfg, trainable_axes)
    self.state = jax.jit(functools.partial(trainer.TrainState.create, optimizer=optimizer))(trainable)
    state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, self.frozen)
    step = run.jit_train_step(cfg, tuned, optimizer, state_shardings, frozen_shardings, mesh, None)
    self.batch = partitioning.shard_batch(random_batch(cfg, config.vocab_size), mesh)
    self.rng = jax.random.key(cfg.seed + 1)
    self.compiled = step.lower(self.state, self.frozen, self.batch, self.rng).compile()
    self.devices = len(mesh.devices.flat)
    self.parameters = optim.count(self.frozen) + optim.count(self.state.trainable)
    backbone = optim.count(self.frozen.get("t5", {})) + optim.count(self.state.trainable.get("t5", {}))
    encoder = (tuned.prompt_length + cfg.task_feature_lengths["inputs"]) if not config.decoder_only else 0
    decoder = cfg.task_feature_lengths["targets"]
    trains_backbone = backbone > optim.count(self.frozen.get("t5", {}))
    self.tokens = cfg.batch_size * (encoder + decoder)  # every position of the batch, prompt included
    self.flops = plan.analytic_flops(config, cfg.batch_size, encoder, decoder, trains_backbone, "none")
    self.flops_crude = (6 if trains_backbone else 4) * backbone * self.tokens
    cost = self.compiled.cost_analysis()
    self.flops_xla = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0)) * self.devices

  def step(self) -> int:
    import jax

    self.state, metrics = self.compiled(self.state, self.frozen, self.batch, self.rng)
    jax.block_until_ready(metrics["loss"])
    return self.tokens

  def compiled_bytes(self) -> int:
    """XLA's memory analysis of the step on one device: arguments + outputs + temporaries - donated aliases."""
    m = self.compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def random_batch(cfg, vocab_size: int) -> dict[str, np.ndarray]:
  """Full-length random rows (no padding) of a seqio-converted encoder-decoder batch."""
  rng = np.random.default_rng(cfg.seed)
  rows, lengths = cfg.batch_size, cfg.task_feature_lengths
  targets = rng.integers(2, vocab_size, (rows, lengths["targets"])).astype(np.int32)
  return {
    "encoder_input_tokens": rng.integers(2, vocab_size, (rows, lengths["inputs"])).astype(np.int32),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones_like(targets, np.float32),
  }


def interleaved(runners: dict[str, Any], repeats: int, steps: int) -> dict[str, list[float]]:
  """{name: [seconds per call, one per repeat]}: one untimed call each, then per repeat every runner `steps` times,
  runner after runner (so load and clocks hit them alike)."""
  for runner in runners.values():
    runner.step()
  seconds = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      start = time.perf_counter()
      for _ in range(steps):
        runner.step()
      seconds[name].append((time.perf_counter() - start) / steps)
  return seconds


def spread(values: list[float]) -> dict[str, float]:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------------------------------------------------------
# The device and its peak.


def device_info(peak_tflops: float | None) -> dict[str, Any]:
  """The local devices, and the bfloat16 dense peak FLOP/s of one (plan.DEVICES by device kind, or the override).

  Raises:
    SystemExit: a device the table does not know, without --peak_tflops.
  """
  import jax

  from prompt_tuning import plan

  device = jax.devices()[0]
  name = plan.device_name(device.device_kind)
  if peak_tflops is None and name is None:
    raise SystemExit(
      f"no peak FLOP/s is known for device kind {device.device_kind!r} (plan.DEVICES knows {', '.join(plan.DEVICES)})"
      ": pass --peak_tflops (bfloat16 dense TFLOP/s of one device)."
    )
  peak = peak_tflops if peak_tflops is not None else plan.DEVICES[name][1]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_name": name,
    "devices": jax.local_device_count(),
    "peak_flops_per_device": peak * 1e12,
    "peak_source": "--peak_tflops" if peak_tflops is not None else f"plan.DEVICES[{name!r}]",
  }


def peak_memory() -> int | None:
  """The device's peak bytes in use so far in this process; None where the runtime keeps no statistics (CPU)."""
  import jax

  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


# ---------------------------------------------------------------------------------------------------------------------
# 1. XXL on one device with the planner's settings.


def xxl_plans(scale: Scale, dry_run: bool) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
  """(the plan as configured, [(settings, estimate)] the planner says fit `scale.xxl_device`)."""
  import jax

  from prompt_tuning import plan

  cfg = run_config(scale.xxl_size, "prompt", scale, scale.xxl_batch, mesh_shape=(1, 1))
  planner = plan.Planner(cfg, host_devices=jax.devices("cpu")[:1])
  base = planner.estimate(planner.base_settings())
  device = scale.xxl_device
  if dry_run:  # a device too small for the stand-in, so the suggestions run (taken out of the table again below)
    plan.DEVICES[device] = (0.6 * base.memory.total / plan.GiB / plan.USABLE_FRACTION, 1.0)
  try:
    chosen = [base] if base.fits(device) else []
    if not chosen:
      alone, together = plan.suggestions(planner, base, device)
      chosen = [e for e in alone if e.fits(device)] or [e for e in together if e.fits(device)][:1]
    configured = {
      "memory": base.memory.total,
      "fits": base.fits(device),
      "settings": dataclasses.asdict(base.settings),
      "device_usable_bytes": plan.USABLE_FRACTION * plan.DEVICES[device][0] * plan.GiB,
    }
  finally:
    if dry_run:
      del plan.DEVICES[device]
  return configured, [(e.settings, e) for e in chosen]


def measure_xxl_child(spec: dict[str, Any]) -> dict[str, Any]:
  """In a fresh process: the XXL run under the planner's settings, its step time and the device's peak memory."""
  import jax

  scale = Scale(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["scale"].items()})
  settings = spec["settings"]
  cfg = run_config(
    scale.xxl_size,
    "prompt",
    scale,
    scale.xxl_batch,
    mesh_shape=(1, 1),
    num_microbatches=settings["num_microbatches"],
    remat_policy=settings["remat_policy"],
  )
  if settings["frozen_dtype"] is not None:
    cfg = dataclasses.replace(cfg, frozen_dtype=settings["frozen_dtype"])
  runner = TrainRunner(cfg, devices=jax.devices()[:1])
  seconds = interleaved({"xxl": runner}, spec["repeats"], scale.steps)["xxl"]
  measured = peak_memory()
  return {
    "seconds": seconds,
    "flops": runner.flops,
    "flops_crude": runner.flops_crude,
    "tokens": runner.tokens,
    "measured_bytes": measured if measured is not None else runner.compiled_bytes(),
    "measured_how": "device peak_bytes_in_use" if measured is not None else "XLA memory analysis (no device stats)",
  }


def run_xxl(scale: Scale, args, info: dict[str, Any]) -> dict[str, Any]:
  configured, chosen = xxl_plans(scale, args.dry_run)
  rows = []
  for settings, estimate in chosen:
    spec = {"scale": dataclasses.asdict(scale), "settings": dataclasses.asdict(settings), "repeats": args.repeats}
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}
    done = subprocess.run(
      [sys.executable, __file__, "--xxl_child", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    row = {"settings": dataclasses.asdict(settings), "planned_bytes": estimate.memory.total}
    if done.returncode:
      row["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    else:
      result = json.loads(done.stdout.strip().splitlines()[-1])
      seconds = statistics.median(result["seconds"])
      row |= result | {
        "mfu": result["flops"] / seconds / info["peak_flops_per_device"],
        "mfu_crude": result["flops_crude"] / seconds / info["peak_flops_per_device"],
        "memory_error": result["measured_bytes"] / estimate.memory.total - 1.0,
      }
    rows.append(row)
  return {"size": scale.xxl_size, "device_planned_for": scale.xxl_device, "as_configured": configured, "runs": rows}


# ---------------------------------------------------------------------------------------------------------------------
# 2. MFU of the train step.


def run_mfu(scale: Scale, args, info: dict[str, Any]) -> list[dict[str, Any]]:
  runners = {}
  for size in scale.train_sizes:
    for method in ("prompt", "model"):
      runners[(size, method)] = TrainRunner(run_config(size, method, scale, scale.train_batch))
  seconds = interleaved(runners, args.repeats, scale.steps)
  rows = []
  for (size, method), runner in runners.items():
    peak = info["peak_flops_per_device"] * runner.devices
    per_repeat = seconds[(size, method)]
    rows.append(
      {
        "size": size,
        "method": "prompt tuning" if method == "prompt" else "model tuning",
        "parameters": runner.parameters,
        "tokens_per_step": runner.tokens,
        "seconds": per_repeat,
        "flops": runner.flops,
        "flops_crude": runner.flops_crude,
        "flops_xla": runner.flops_xla,
        "mfu": [runner.flops / s / peak for s in per_repeat],
        "mfu_crude": [runner.flops_crude / s / peak for s in per_repeat],
      }
    )
  return rows


# ---------------------------------------------------------------------------------------------------------------------
# 3. Decoding: ours vs HF generate + PEFT.


class OursDecode:
  def __init__(self, size: str, batch: int, scale: Scale):
    import jax

    import prompt_tuning as pt
    from prompt_tuning import decoding

    config = pt.get_config(size, dtype=scale.dtype)
    params = jax.jit(lambda k: jax.tree.map(lambda x: x.astype(scale.dtype), pt.init_params(config, k)))(
      jax.random.key(0)
    )
    prompt = jax.random.uniform(jax.random.key(1), (scale.decode_prompt, config.emb_dim), minval=-0.5, maxval=0.5)
    tokens = np.random.default_rng(0).integers(2, config.vocab_size, (batch, scale.decode_inputs)).astype(np.int32)
    settings = decoding.DecodingSettings(max_decode_length=scale.new_tokens, eos_id=-1)  # never stops early
    self.generate = lambda: decoding.generate(config, params, tokens, prompt=prompt, settings=settings)
    # What generate.py's --breakdown runs in parts.
    self.config, self.params, self.prompt, self.inputs, self.settings = config, params, prompt, tokens, settings
    self.tokens = batch * scale.new_tokens

  def step(self) -> int:
    self.generate().tokens.block_until_ready()
    return self.tokens


class HfDecode:
  def __init__(self, size: str, batch: int, scale: Scale):
    import peft
    import torch
    from common import hf_t5

    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    base = hf_t5(size, os.cpu_count() or 1).to(self.device, getattr(torch, scale.dtype))
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=scale.decode_prompt)
    self.model = peft.get_peft_model(base, config).eval()
    vocab = base.config.vocab_size
    ids = np.random.default_rng(0).integers(2, vocab, (batch, scale.decode_inputs))
    self.ids = torch.tensor(ids, device=self.device)
    self.new = scale.new_tokens
    self.tokens = batch * scale.new_tokens

  def step(self) -> int:
    with self.torch.no_grad():
      out = self.model.generate(
        input_ids=self.ids,
        attention_mask=self.torch.ones_like(self.ids),
        max_new_tokens=self.new,
        min_new_tokens=self.new,  # as many tokens as ours, whatever the random weights emit
        do_sample=False,
        num_beams=1,
      )
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    assert out.shape[1] >= self.new, out.shape
    return self.tokens


def run_decode(scale: Scale, args) -> list[dict[str, Any]]:
  rows = []
  for size in scale.decode_sizes:
    for batch in scale.decode_batches:
      runners: dict[str, Any] = {"ours": OursDecode(size, batch, scale)}
      hf_error = None
      if not args.skip_hf:
        try:
          runners["hf"] = HfDecode(size, batch, scale)
        except ImportError as e:  # torch, transformers or peft missing on this machine: said in the table
          hf_error = f"not measured: {e}"
      seconds = interleaved(runners, args.repeats, 1)
      row = {"size": size, "batch": batch, "new_tokens": scale.new_tokens, "inputs": scale.decode_inputs}
      row["ours_tokens_per_s"] = [runners["ours"].tokens / s for s in seconds["ours"]]
      if "hf" in runners:
        row["hf_device"] = runners["hf"].device
        row["hf_tokens_per_s"] = [runners["hf"].tokens / s for s in seconds["hf"]]
        row["ratio"] = [h / o for o, h in zip(seconds["ours"], seconds["hf"])]
      else:
        row["hf_error"] = hf_error or "skipped (--skip_hf)"
      rows.append(row)
      del runners
  return rows


# ---------------------------------------------------------------------------------------------------------------------
# Report.


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def _pm(values: list[float], fmt: str = "{:.1f}", scale: float = 1.0) -> str:
  s = spread([v * scale for v in values])
  return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def markdown(result: dict[str, Any]) -> str:
  info = result["device"]
  lines = [
    f"# Accelerator benchmark, {result['date']}",
    "",
    f"Device: {info['devices']} x {info['device_kind']} ({info['platform']}); peak "
    f"{info['peak_flops_per_device'] / 1e12:g} TFLOP/s bfloat16 dense per device ({info['peak_source']}). "
    f"Command: `{result['command']}`. {result['repeats']} repeats, interleaved; median (min-max)."
    + (" DRY RUN: tiny configs on the CPU, the figures mean nothing." if result["dry_run"] else ""),
    "",
    "## Train-step MFU (bfloat16 activations, random full-length rows, dropout 0.1, Adafactor)",
    "",
    "| size | method | parameters | tokens/step | step ms | MFU (analytic) % | MFU (crude 4/6·N·D) % |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in result["mfu"]:
    lines.append(
      f"| {r['size']} | {r['method']} | {r['parameters']:,} | {r['tokens_per_step']:,} | "
      f"{_pm(r['seconds'], scale=1e3)} | {_pm(r['mfu'], scale=100)} | {_pm(r['mfu_crude'], scale=100)} |"
    )
  xxl = result["xxl"]
  configured = xxl["as_configured"]
  lines += [
    "",
    f"## {xxl['size']} prompt tuning on one device, the planner's settings for {xxl['device_planned_for']}",
    "",
    f"As configured the planner says {_gib(configured['memory'])} per device "
    f"({'fits' if configured['fits'] else 'does not fit'})."
    if configured
    else "Not measured (--skip_xxl).",
    "",
    "| settings | planned | measured | error | step s | MFU (analytic) % |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for r in xxl["runs"]:
    s = r["settings"]
    text = f"frozen {s['frozen_dtype'] or 'as loaded'}, remat {s['remat_policy']}, {s['num_microbatches']} microbatches"
    if "error" in r:
      lines.append(f"| {text} | {_gib(r['planned_bytes'])} | failed: {' '.join(r['error'])} | | | |")
      continue
    lines.append(
      f"| {text} | {_gib(r['planned_bytes'])} | {_gib(r['measured_bytes'])} ({r['measured_how']}) | "
      f"{100 * r['memory_error']:+.1f}% | {_pm(r['seconds'], '{:.3f}')} | {100 * r['mfu']:.1f} |"
    )
  lines += [
    "",
    "## Greedy decoding with a soft prompt: ours vs HF generate + PEFT (exactly the same number of new tokens)",
    "",
    "| size | batch | inputs + prompt | new tokens | ours tokens/s | HF + PEFT tokens/s | ours / HF |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in result["decode"]:
    hf = f"{_pm(r['hf_tokens_per_s'])} ({r['hf_device']})" if "hf_tokens_per_s" in r else r["hf_error"]
    ratio = _pm(r["ratio"], "{:.2f}") + "x" if "ratio" in r else "-"
    lines.append(
      f"| {r['size']} | {r['batch']} | {r['inputs']} + {result['scale']['decode_prompt']} | {r['new_tokens']} | "
      f"{_pm(r['ours_tokens_per_s'])} | {hf} | {ratio} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default=str(HERE / "accelerator_results"))
  parser.add_argument("--peak_tflops", type=float, default=None, help="bfloat16 dense peak of one device (override)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dry_run", action="store_true", help="every part on the CPU with tiny configs (seconds)")
  parser.add_argument("--skip_hf", action="store_true", help="no Hugging Face baseline")
  parser.add_argument("--skip_xxl", action="store_true")
  parser.add_argument("--xxl_child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.xxl_child is not None:
    print(json.dumps(measure_xxl_child(json.loads(args.xxl_child))), flush=True)
    return {}
  if args.dry_run:
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  if jax.devices()[0].platform == "cpu" and not args.dry_run:
    raise SystemExit("no accelerator here (JAX sees only CPUs): run on a GPU or TPU, or pass --dry_run to check.")
  scale = DRY_RUN if args.dry_run else Scale()
  info = device_info(1.0 if args.dry_run and args.peak_tflops is None else args.peak_tflops)
  sys.path.insert(0, str(HERE))  # common.py
  result: dict[str, Any] = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": " ".join(["python", "benchmarks/accelerator.py", *(argv if argv is not None else sys.argv[1:])]),
    "dry_run": args.dry_run,
    "repeats": args.repeats,
    "device": info,
    "jax": jax.__version__,
    "scale": dataclasses.asdict(scale),
  }
  # XXL first: its child processes need the device's memory before this process holds any.
  result["xxl"] = {"size": scale.xxl_size, "device_planned_for": scale.xxl_device, "runs": [], "as_configured": {}}
  if not args.skip_xxl:
    result["xxl"] = run_xxl(scale, args, info)
  result["mfu"] = run_mfu(scale, args, info)
  result["decode"] = run_decode(scale, args)
  out = Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "accelerator.json").write_text(json.dumps(result, indent=1))
  (out / "accelerator.md").write_text(markdown(result))
  print(markdown(result), flush=True)
  return result


if __name__ == "__main__":
  main()
