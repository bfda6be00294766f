"""The memory and throughput planner: what a run needs on each device of a mesh, and whether it fits.

    prompt-tuning plan --gin_file=prompt_xxl.gin [--mesh=DxM] [--device=h100] [--search]

For a run's gin config (the one `train` takes) on a (data x model) mesh it prints, per device: the frozen
parameters, the trainable vectors, the optimizer state, the batch and the activations and temporaries of the train
step; the FLOPs of a step; and, with `--device`, whether it fits the device's memory and, if not, the settings that
would make it fit. `--search` finds the smallest mesh it fits on. Nothing is allocated and no checkpoint is read:
INITIAL_CHECKPOINT_PATH need not exist here (MODEL_SIZE gives the architecture).

How each figure is computed (the report names the method next to every figure):

- parameters, trainable vectors, optimizer state, batch: exact, from the shapes and dtypes of the abstract trees
  (`run.plan`, `jax.eval_shape` of the optimizer's init) and their shardings on the mesh;
- activations and temporaries: XLA's compiled memory analysis of the real train step (`run.jit_train_step`)
  lowered over abstract inputs (`jax.ShapeDtypeStruct`s with shardings) on this machine's CPU devices, one per
  model-parallel shard (the data axis is folded into the rows per device). A model of at most
  `FULL_COMPILE_MAX_LAYERS` layers is compiled whole; a deeper one at 1 and 2 layers per stack, at full width,
  lengths and batch, and extrapolated linearly to its depth (temporaries grow by the same bytes with every layer:
  checked against whole-model compiles and against the measured peak of a real CPU train step in
  tests/test_plan.py). XLA:CPU computes bfloat16 in float32 and merges a
  rematerialized layer's recomputation back into its forward pass (it expands optimization barriers), so its
  figures for those settings are not an accelerator's; the step is compiled in float32 without remat, and the
  precision and remat settings are applied from what the backward pass saves, as JAX's `vjp` of the loss
  declares it (`saved_bytes`): bfloat16 scales the activations by the ratio of saved bytes in bfloat16 and
  float32; REMAT_POLICY keeps one layer's whole working set and, for each other layer, what the policy saves (its
  inputs for 'full', its matmul outputs for 'dots_saveable');
- other data-parallel sizes and NUM_MICROBATCHES: activations scale with the rows of a microbatch on a device;
  the trainable vectors' gradients and update (float32, and an accumulator with microbatches) do not;
- FLOPs: XLA's cost analysis of the same compiled step (extrapolated the same way), and the analytic count
  `analytic_flops`: 2 FLOPs per weight per token forward (encoder weights x encoder tokens, decoder weights x
  decoder tokens, cross-attention keys and values over encoder tokens, the logits), plus attention; x3 for model
  tuning (6·N·tokens: input and weight gradients), x2 when only tuned vectors train (4·N·tokens: no weight
  gradients), plus one forward for REMAT_POLICY='full'.

A plan fits a device when its total is at most `USABLE_FRACTION` of the device's memory (the rest: XLA's
workspace, fragmentation, the runtime). On GPUs, JAX takes 75% of the memory unless XLA_PYTHON_CLIENT_MEM_FRACTION
is raised (e.g. to 0.95).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from prompt_tuning import gin_config, optim, partitioning, run, trainer

GiB = 1 << 30
# Memory per device in GiB (as vendors state it) and bfloat16 dense peak TFLOP/s per device (TPU: per chip).
DEVICES: dict[str, tuple[float, float]] = {
  "v3": (16, 123),
  "v4": (32, 275),
  "v5e": (16, 197),
  "v5p": (95, 459),
  "a100-40": (40, 312),
  "a100-80": (80, 312),
  "h100": (80, 989),
  "h100-pcie": (80, 756),
  "h200": (141, 989),
}
# JAX's `device_kind` (e.g. "NVIDIA H100 80GB HBM3", "TPU v5 lite") -> a DEVICES name: the first pattern found in it
# (case-insensitive) wins, so the more specific patterns come first.
DEVICE_KINDS: tuple[tuple[str, str], ...] = (
  ("h200", "h200"),
  ("h100 pcie", "h100-pcie"),
  ("h100", "h100"),
  ("a100-sxm4-80gb", "a100-80"),
  ("a100 80gb", "a100-80"),
  ("a100", "a100-40"),
  ("tpu v5 lite", "v5e"),
  ("tpu v5e", "v5e"),
  ("tpu v5", "v5p"),
  ("tpu v4", "v4"),
  ("tpu v3", "v3"),
)
USABLE_FRACTION = 0.9
# Models of at most this many layers (encoder + decoder) are compiled whole; deeper ones at 1 and 2 layers per stack.
FULL_COMPILE_MAX_LAYERS = 8
# Host CPU devices the command line asks XLA for (model-parallel shards compile on them); --mesh may ask for more.
HOST_DEVICES = 16
PLACEHOLDER = "(not read by the planner)"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the planner varies: the mesh and the memory settings of a run."""

  data: int = 1
  model: int = 1
  num_microbatches: int = 1
  frozen_dtype: str | None = None
  remat_policy: str = "none"

  @property
  def devices(self) -> int:
    return self.data * self.model

  def mesh_text(self) -> str:
    return f"{self.data}x{self.model}"

  def apply(self, cfg: run.RunConfig) -> run.RunConfig:
    """`cfg` with these settings (the mesh as RunConfig.mesh_shape)."""
    return dataclasses.replace(
      cfg,
      num_partitions=self.model,
      mesh_shape=(self.data, self.model),
      num_microbatches=self.num_microbatches,
      frozen_dtype=self.frozen_dtype,
      remat_policy=self.remat_policy,
    )

  def flags(self, base: Settings) -> list[str]:
    """The command-line settings that turn `base` into these."""
    out = []
    if self.frozen_dtype != base.frozen_dtype:
      out.append(f'--gin.FROZEN_DTYPE="{self.frozen_dtype!r}"')
    if self.remat_policy != base.remat_policy:
      out.append(f"--gin.REMAT_POLICY=\"'{self.remat_policy}'\"")
    if self.num_microbatches != base.num_microbatches:
      out.append(f"--gin.NUM_MICROBATCHES={self.num_microbatches}")
    if self.model != base.model:
      out.append(f"--gin.NUM_PARTITIONS={self.model}")
    if (self.data, self.model) != (base.data, base.model):
      out.append(f"--mesh={self.mesh_text()}")
    return out


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device."""

  frozen: int
  trainable: int
  optimizer: int
  batch: int
  temporaries: int

  @property
  def total(self) -> int:
    return self.frozen + self.trainable + self.optimizer + self.batch + self.temporaries


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A planned run: its settings, memory per device, FLOPs per step (all devices) and how they were computed."""

  settings: Settings
  memory: Memory
  temporaries_method: str
  flops_compiled: float
  flops_analytic: float
  counts: dict[str, int]

  def fits(self, device: str) -> bool:
    return self.memory.total <= USABLE_FRACTION * DEVICES[device][0] * GiB


def parse_mesh(text: str) -> tuple[int, int]:
  """'DxM' (or 'D,M') -> (data, model).

  Raises:
    ValueError: saying how to write it.
  """
  match = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", text)
  if not match or min(int(match.group(1)), int(match.group(2))) < 1:
    raise ValueError(f"--mesh={text!r} is not a mesh: write DATAxMODEL, e.g. --mesh=1x8 (8-way model parallel).")
  return int(match.group(1)), int(match.group(2))


def check_device(name: str) -> str:
  if name not in DEVICES:
    raise ValueError(f"--device={name!r} is not known: use one of {', '.join(DEVICES)}.")
  return name


def device_name(device_kind: str) -> str | None:
  """The DEVICES name of a JAX `device_kind`, or None for a device the table does not know (e.g. a CPU)."""
  kind = device_kind.lower()
  return next((name for pattern, name in DEVICE_KINDS if pattern in kind), None)


def _shard_bytes(x, sharding) -> int:
  return int(np.prod(sharding.shard_shape(tuple(x.shape)), dtype=np.int64)) * jnp.dtype(x.dtype).itemsize


def tree_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) under `shardings` (the same structure)."""
  return int(sum(_shard_bytes(x, s) for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def sequence_lengths(cfg: run.RunConfig, tuned) -> tuple[int, int]:
  """(encoder positions with the prompt, decoder positions), as the model reads them (`T5Config.sequence_lengths`)."""
  lengths = cfg.task_feature_lengths
  return tuned.config.sequence_lengths(int(lengths.get("inputs", 0)), int(lengths["targets"]), tuned.prompt_length)


def abstract_batch(cfg: run.RunConfig, decoder_only: bool, rows: int, sharding=None) -> dict[str, Any]:
  """ShapeDtypeStructs of a seqio-converted batch of `rows` rows (inputs.MODEL_FEATURES_*): int32 [rows, length]."""
  lengths = cfg.task_feature_lengths
  if decoder_only:  # PrefixLMFeatureConverter: inputs and targets in one decoder sequence
    length = int(lengths.get("inputs", 0)) + int(lengths["targets"])
    shapes = dict.fromkeys(
      ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention"), length
    )
  else:
    shapes = {"encoder_input_tokens": int(lengths["inputs"])}
    decoder = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    shapes |= dict.fromkeys(decoder, int(lengths["targets"]))
  batch = {k: jax.ShapeDtypeStruct((rows, n), jnp.int32, sharding=sharding) for k, n in shapes.items()}
  # A multi-task method reads each row's task (one per row: the plan models unpacked batches).
  if any(m.task_count for m in run.tuning_methods(cfg)):
    batch["task_ids"] = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding)
  return batch


def _dropout_key() -> jax.Array:
  """The train step's key, as training makes it (train.py: jax.random.key, threefry). XLA:CPU materializes
  threefry's random bits for the dropout masks, which accelerators fuse away; with them the planned temporaries
  match a measured CPU step (tests/test_plan.py) and are an upper bound for an accelerator's. RngBitGenerator keys
  (`impl="rbg"`) would plan 21% less at t5_1_1_small's width, but training does not use them."""
  return jax.random.key(0)


def _float32_bytes(tree) -> int:
  """Bytes per device of `tree`'s arrays in float32 (the dtype of their gradients and updates)."""
  return int(sum(_shard_bytes(x, x.sharding) // jnp.dtype(x.dtype).itemsize * 4 for x in jax.tree.leaves(tree)))


def saved_bytes(cfg: run.RunConfig, config, rows: int, model_parallel: int) -> int:
  """Bytes per device of what the backward pass keeps from the forward pass, as JAX's `vjp` of the training loss
  (dropout on) declares it, for `rows` rows: the residuals of `jax.vjp`, less the weights (and their casts) it
  keeps, model-parallel dimensions (heads, MLP, vocabulary) divided over `model_parallel` devices."""
  tuned = run.tuned_model(cfg, config)
  backbone = run.backbone_shapes(config)
  shapes = {"t5": backbone, **run.abstract_vectors(tuned, backbone)}
  trainable, frozen = optim.partition(shapes, run.pattern_of(cfg, tuned), allow_empty=True)
  batch = abstract_batch(cfg, config.decoder_only, rows)
  weights = {tuple(x.shape) for x in jax.tree.leaves(shapes)}
  sharded = {config.num_heads, config.mlp_dim, config.vocab_size}

  def pullback(trainable, frozen, batch):
    loss = lambda t: trainer.summed_loss(t, frozen, batch, _dropout_key(), tuned.forward, cfg.z_loss, True)[0]
    return jax.vjp(loss, trainable)[1]

  total = 0
  for x in jax.tree.leaves(jax.eval_shape(pullback, trainable, frozen, batch)):
    if tuple(x.shape) in weights or not jnp.issubdtype(x.dtype, jnp.number):
      continue
    share = model_parallel if any(d in sharded and d % model_parallel == 0 for d in x.shape) else 1
    total += int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize // share
  return total


def analytic_flops(config, rows: int, encoder_length: int, decoder_length: int, trains_backbone: bool, remat: str):
  """FLOPs of one train step over `rows` rows (module docstring): the forward pass x3 (model tuning) or x2 (tuned
  vectors only: no weight gradients), plus the layers' forward again for REMAT_POLICY='full'."""
  d, joined, f, v = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim, config.vocab_size
  mlp = (len(config.mlp_activations) + 1) * d * f  # weights a token meets in one feed-forward block
  te, td = encoder_length, decoder_length
  encoder = config.encoder_depth * (te * (4 * d * joined + mlp) + 2 * te * te * joined)
  cross = (td * 2 * d * joined + te * 2 * d * joined + 2 * td * te * joined) if config.encoder_depth else 0
  decoder = config.num_decoder_layers * (td * (4 * d * joined + mlp) + 2 * td * td * joined + cross)
  layers = 2 * rows * (encoder + decoder)
  forward = layers + 2 * rows * td * d * v
  return forward * (3 if trains_backbone else 2) + (layers if remat == "full" else 0)


def _extrapolate(values: dict[tuple[int, int], float], depth: tuple[int, int]) -> float:
  """A per-layer-linear quantity at `depth` (encoder, decoder layers) from its values at the compiled depths."""
  if depth in values:
    return values[depth]
  enc, dec = depth
  if len(values) == 2:  # equal stacks (or decoder-only): 1 and 2 layers each
    (_, y1), (_, y2) = sorted(values.items(), key=lambda kv: kv[0][1])
    return y1 + (dec - 1) * (y2 - y1)
  y11, y21, y12 = values[(1, 1)], values[(2, 1)], values[(1, 2)]
  return y11 + (enc - 1) * (y21 - y11) + (dec - 1) * (y12 - y11)


class Planner:
  """Plans one run's config under different `Settings`; compiles are cached and shared between them.

  Args:
    cfg: the run's settings (RunConfig; its paths and task are not read).
    host_devices: the CPU devices to compile on (default: this process's); a plan needs as many as its model axis.
    full_compile_max_layers: compile models of at most this many layers whole (else 1 and 2 layers per stack).
  """

  def __init__(self, cfg: run.RunConfig, host_devices=None, full_compile_max_layers: int = FULL_COMPILE_MAX_LAYERS):
    self.cfg = cfg
    self.host_devices = list(host_devices) if host_devices is not None else jax.devices("cpu")
    self.config = run.with_run_settings(cfg, run.planned_config(cfg))
    tuned = run.tuned_model(cfg, self.config)
    self.lengths = sequence_lengths(cfg, tuned)
    self.trains_backbone = any(
      re.search(run.pattern_of(cfg, tuned), f"t5/{path}") for path in optim._flat(run.backbone_shapes(self.config))
    )
    enc = self.config.encoder_depth
    self.depth = (enc, self.config.num_decoder_layers)
    small = (min(enc, 1), 1), (min(enc, 2), 2)
    self.layer_variants = list(small) if enc in (0, self.depth[1]) else [(1, 1), (2, 1), (1, 2)]
    self.whole = sum(self.depth) <= full_compile_max_layers
    self._compiled: dict[tuple, dict[tuple[int, int], tuple[int, float]]] = {}
    self._saved: dict[tuple, int] = {}

  def base_settings(self) -> Settings:
    data, model = self.cfg.mesh_shape or (1, self.cfg.num_partitions)
    return Settings(int(data), int(model), self.cfg.num_microbatches, self.cfg.frozen_dtype, self.cfg.remat_policy)

  def _variant(self, depth: tuple[int, int], **changes):
    enc, dec = depth
    if "encoder" in self.config.stacks:
      changes["num_encoder_layers"] = enc
    return self.config.replace(num_decoder_layers=dec, **changes)

  def check(self, settings: Settings) -> None:
    """Refuses settings the run itself would refuse: an uneven split of the batch or of the model's dimensions.

    Raises:
      ValueError: naming the setting to change.
    """
    c, batch = self.config, self.cfg.batch_size
    if batch % (settings.data * settings.num_microbatches):
      raise ValueError(
        f"BATCH_SIZE {batch} does not split into {settings.data} data shards x {settings.num_microbatches} "
        "microbatches: change the mesh's data axis or NUM_MICROBATCHES."
      )
    for name in ("num_heads", "mlp_dim", "vocab_size"):
      if getattr(c, name) % settings.model:
        raise ValueError(
          f"{settings.model}-way model parallelism does not divide {name} {getattr(c, name)} of {c}: choose a "
          "model axis (NUM_PARTITIONS, --mesh) that divides the heads, the MLP width and the vocabulary."
        )

  def _compile(self, settings: Settings) -> tuple[dict[tuple[int, int], tuple[int, float]], int, int]:
    """({depth: (temporary bytes, FLOPs) per device}, rows, microbatches) of the train step compiled in float32
    without remat on `settings.model` host CPU devices; one compile per model axis, at the first rows asked."""
    model = settings.model
    if model not in self._compiled:
      if len(self.host_devices) < model:
        raise ValueError(
          f"planning {model}-way model parallelism compiles on {model} CPU devices and this process has "
          f"{len(self.host_devices)} (JAX started with them): run `prompt-tuning plan` in a fresh process (it starts "
          f"{HOST_DEVICES}, or --mesh's), or set "
          f"XLA_FLAGS=--xla_force_host_platform_device_count={model} before JAX starts."
        )
      rows, micro = self.cfg.batch_size // settings.data, settings.num_microbatches
      cfg = dataclasses.replace(
        Settings(1, model, micro).apply(self.cfg), batch_size=rows, activation_dtype="float32", frozen_dtype=None
      )
      mesh = partitioning.make_mesh(model, (1, model), devices=self.host_devices[:model])
      depths = [self.depth] if self.whole else list(self.layer_variants)
      if self.whole and self.layer_variants[0] != self.depth:
        depths.append(self.layer_variants[0])  # one layer per stack: REMAT_POLICY's working set
      results = {}
      for depth in depths:
        config = self._variant(depth, dtype="float32", param_dtype="float32", remat="none")
        tuned, state, frozen, optimizer = run.abstract_training(cfg, config, mesh)
        shardings = jax.tree.map(lambda x: x.sharding, (state, frozen))
        step = run.jit_train_step(cfg, tuned, optimizer, *shardings, mesh, None)
        batch = abstract_batch(cfg, config.decoder_only, rows, partitioning.batch_sharding(mesh))
        compiled = step.lower(state, frozen, batch, _dropout_key()).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        results[depth] = (int(compiled.memory_analysis().temp_size_in_bytes), float(cost.get("flops", 0.0)))
      self._compiled[model] = (results, rows, micro)
    return self._compiled[model]

  def _saved_layers(self, settings: Settings, rows: int, dtype: str, remat: str) -> dict[tuple[int, int], int]:
    out = {}
    for depth in self.layer_variants:
      key = (settings.model, depth, rows, dtype, remat, settings.frozen_dtype)
      if key not in self._saved:
        config = self._variant(depth, dtype=dtype, remat=remat, param_dtype=settings.frozen_dtype or "float32")
        self._saved[key] = saved_bytes(settings.apply(self.cfg), config, rows, settings.model)
      out[depth] = self._saved[key]
    return out

  def estimate(self, settings: Settings) -> Estimate:
    """The plan of the run under `settings` (the mesh as (data, model)).

    Raises:
      ValueError: settings that do not split the batch or the model (`check`), or too few host devices.
    """
    self.check(settings)
    cfg = settings.apply(self.cfg)
    mesh = AbstractMesh((settings.data, settings.model), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    config = run.with_run_settings(cfg, run.planned_config(cfg))
    _, state, frozen, _ = run.abstract_training(cfg, config, mesh)
    exact = {
      "frozen": tree_device_bytes(frozen, jax.tree.map(lambda x: x.sharding, frozen)),
      "trainable": tree_device_bytes(state.trainable, jax.tree.map(lambda x: x.sharding, state.trainable)),
      "optimizer": tree_device_bytes(state.opt_state, jax.tree.map(lambda x: x.sharding, state.opt_state)),
    }
    rows = self.cfg.batch_size // settings.data
    batch = sum(int(np.prod(x.shape)) * 4 for x in abstract_batch(cfg, config.decoder_only, rows).values())
    temporaries, method, flops = self._temporaries(settings, _float32_bytes(state.trainable))
    counts = {"trainable": optim.count(state.trainable), "frozen": optim.count(frozen)}
    analytic = analytic_flops(config, self.cfg.batch_size, *self.lengths, self.trains_backbone, settings.remat_policy)
    memory = Memory(exact["frozen"], exact["trainable"], exact["optimizer"], batch, temporaries)
    return Estimate(settings, memory, method, flops, analytic, counts)

  def _temporaries(self, settings: Settings, trainable_f32: int) -> tuple[int, str, float]:
    """(bytes per device, how they were computed, FLOPs of the step on all devices): the module docstring's method."""
    compiled, rows_c, micro_c = self._compile(settings)
    rows_micro_c = rows_c // micro_c
    rows = self.cfg.batch_size // settings.data
    scale = (rows // settings.num_microbatches) / rows_micro_c  # rows of a microbatch, against the compiled ones

    def fixed(micro: int) -> int:  # gradients and update in float32, and the accumulator of microbatches
      return trainable_f32 * (2 if micro == 1 else 3)

    temp = {depth: t for depth, (t, _) in compiled.items()}
    activations = max(_extrapolate(temp, self.depth) - fixed(micro_c), 0)
    how = "compiled whole" if self.whole else f"compiled at 1 and 2 layers per stack, extrapolated to {self.depth}"
    dtype = self.config.dtype
    ratio = 1.0
    if dtype != "float32":
      low, high = (self._saved_layers(settings, rows_micro_c, d, "none") for d in (dtype, "float32"))
      deeper, shallow = self.layer_variants[-1], self.layer_variants[0]
      ratio = (low[deeper] - low[shallow]) / max(high[deeper] - high[shallow], 1)
      how += f"; {dtype} x{ratio:.2f} (saved bytes per layer, {dtype} / float32)"
    if settings.remat_policy == "none":
      activations *= ratio
    else:
      one = self.layer_variants[0]
      saved = self._saved_layers(settings, rows_micro_c, dtype, settings.remat_policy)
      kept = _extrapolate({k: float(v) for k, v in saved.items()}, self.depth) - saved[one]
      activations = ratio * max(temp[one] - fixed(micro_c), 0) + kept
      how += f"; remat '{settings.remat_policy}': one layer's working set + what the policy saves of the others"
    flops = _extrapolate({depth: f for depth, (_, f) in compiled.items()}, self.depth)
    flops *= (self.cfg.batch_size / rows_c) * settings.model  # all devices, the whole batch
    if settings.remat_policy == "full":
      layers = analytic_flops(self.config, self.cfg.batch_size, *self.lengths, False, "full")
      flops += layers - analytic_flops(self.config, self.cfg.batch_size, *self.lengths, False, "none")
    method = f"XLA:CPU float32 step {how}"
    return int(fixed(settings.num_microbatches) + activations * scale), method, flops


def _with(settings: Settings, **changes) -> Settings:
  return dataclasses.replace(settings, **changes)


def _more_microbatches(planner: Planner, settings: Settings, device: str, tried: list[Estimate]) -> Settings:
  """NUM_MICROBATCHES doubled until the run fits or a microbatch is one row; every plan tried joins `tried`."""
  rows = planner.cfg.batch_size // settings.data
  while settings.num_microbatches * 2 <= rows and rows % (settings.num_microbatches * 2) == 0:
    settings = _with(settings, num_microbatches=settings.num_microbatches * 2)
    tried.append(planner.estimate(settings))
    if tried[-1].fits(device):
      break
  return settings


def suggestions(planner: Planner, base: Estimate, device: str, max_model: int = HOST_DEVICES):
  """(plans of single changes, plans of changes added one on another) tried to make the run fit `device`.

  Alone: FROZEN_DTYPE='bfloat16' (unless backbone weights train), REMAT_POLICY='full', more NUM_MICROBATCHES. When
  none fits alone, together, in that order, then the model axis doubled (more devices) until it fits."""
  start = base.settings
  changes = []
  if not planner.trains_backbone and start.frozen_dtype in (None, "float32"):
    changes.append({"frozen_dtype": "bfloat16"})
  if start.remat_policy != "full":
    changes.append({"remat_policy": "full"})
  alone = [planner.estimate(_with(start, **change)) for change in changes]
  _more_microbatches(planner, start, device, alone)
  if any(e.fits(device) for e in alone):
    return alone, []
  together, settings = [], start
  for change in changes:
    settings = _with(settings, **change)
    together.append(planner.estimate(settings))

  def fits() -> bool:
    return bool(together) and together[-1].fits(device)

  if not fits():
    settings = _more_microbatches(planner, settings, device, together)
  while not fits() and settings.model * 2 <= max_model:
    candidate = _with(settings, model=settings.model * 2)
    try:
      planner.check(candidate)
    except ValueError:
      break
    settings = candidate
    together.append(planner.estimate(settings))
  return alone, together


def smallest_mesh(planner: Planner, device: str, max_devices: int = 1024, max_model: int = HOST_DEVICES):
  """The plan on the fewest devices of `device` (then the least memory) with the config's own memory settings, or
  None when none up to `max_devices` fits."""
  base = planner.base_settings()
  devices = 1
  while devices <= max_devices:
    fitting = []
    model = 1
    while model <= min(devices, max_model):
      settings = _with(base, data=devices // model, model=model)
      try:
        planner.check(settings)
      except ValueError:
        model *= 2
        continue
      estimate = planner.estimate(settings)
      if estimate.fits(device):
        fitting.append(estimate)
      model *= 2
    if fitting:
      return min(fitting, key=lambda e: e.memory.total)
    devices *= 2
  return None


def _bytes(n: float) -> str:
  for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


def _settings_text(s: Settings, planner: Planner) -> str:
  frozen = s.frozen_dtype or f"{planner.config.param_dtype if planner.cfg.frozen_dtype else 'float32'} (as loaded)"
  return (
    f"mesh {s.mesh_text()} (data x model), activations {planner.config.dtype}, frozen {frozen}, "
    f"remat {s.remat_policy}, {s.num_microbatches} microbatch(es)"
  )


def format_estimate(planner: Planner, e: Estimate, device: str | None) -> str:
  """The report of one plan: a line per figure, with how it was computed."""
  cfg, m = planner.cfg, e.memory
  rows = cfg.batch_size // e.settings.data
  encoder, decoder = planner.lengths
  tuning = "model tuning" if planner.trains_backbone else "tuned vectors"
  lines = [
    f"model: {cfg.model_size or 'from INITIAL_CHECKPOINT_PATH'}: {e.counts['frozen']:,} frozen and "
    f"{e.counts['trainable']:,} trainable parameters ({tuning})",
    f"run: batch {cfg.batch_size} = {e.settings.data} data shard(s) x {rows} rows; encoder {encoder} positions "
    f"(prompt included), decoder {decoder}",
    f"settings: {_settings_text(e.settings, planner)}",
    "per device:",
    f"  frozen parameters        {_bytes(m.frozen):>12}  exact (shapes, dtypes, shardings)",
    f"  trainable vectors        {_bytes(m.trainable):>12}  exact (float32)",
    f"  optimizer state          {_bytes(m.optimizer):>12}  exact (the optimizer's state shapes)",
    f"  batch                    {_bytes(m.batch):>12}  exact",
    f"  activations, temporaries {_bytes(m.temporaries):>12}  {e.temporaries_method}",
    f"  total                    {_bytes(m.total):>12}",
    f"FLOPs per step (all devices): {e.flops_compiled:.3e} (XLA cost analysis of the same compiles); analytic "
    f"{e.flops_analytic:.3e} ({'6' if planner.trains_backbone else '4'}·N·tokens-style count"
    f"{', + 1 forward for remat full' if e.settings.remat_policy == 'full' else ''})",
  ]
  if device:
    memory, tflops = DEVICES[device]
    usable = USABLE_FRACTION * memory * GiB
    verdict = "fits" if e.fits(device) else "does not fit"
    lines.append(
      f"{device}: {memory:g} GiB per device, {_bytes(usable)} usable ({USABLE_FRACTION:.0%}): {verdict} "
      f"({100 * m.total / usable:.0f}% of usable)"
    )
    ideal = e.flops_analytic / (e.settings.devices * tflops * 1e12)
    lines.append(f"ideal step time at the bfloat16 peak ({tflops:g} TFLOP/s per device): {ideal * 1e3:.1f} ms")
  return "\n".join(lines)


def format_suggestions(planner: Planner, base: Estimate, alone, together, device: str) -> str:
  def line(e: Estimate) -> str:
    flags = " ".join(e.settings.flags(base.settings))
    return f"  {flags:<72} {_bytes(e.memory.total):>11}  {'fits' if e.fits(device) else 'does not fit'}"

  lines = [f"to fit on {device}, each alone:", *map(line, alone)]
  if together:
    lines += ["together (each line adds to the ones above):", *map(line, together)]
  if not any(e.fits(device) for e in [*alone, *together]):
    lines.append(f"  none of these fits on {device}: add data-parallel devices (--mesh) or choose a larger device.")
  return "\n".join(lines)


def planning_run_config() -> run.RunConfig:
  """RunConfig as gin binds it, with what planning never reads filled in: MODEL_DIR, MIXTURE_OR_TASK_NAME, an
  INITIAL_CHECKPOINT_PATH left %gin.REQUIRED, and the prompt initializer (class labels need the task and its
  vocabulary; the prompt's shape does not)."""
  import gin

  from prompt_tuning import prompts

  overrides = {"model_dir": PLACEHOLDER, "mixture_or_task_name": PLACEHOLDER}
  if isinstance(gin.query_parameter("%INITIAL_CHECKPOINT_PATH"), gin.config.ConfigurableReference):
    overrides["initial_checkpoint_path"] = PLACEHOLDER
  with gin.unlock_config():  # the prompt's shape, not its initializer (bound, as `configured_run_config` binds)
    gin.bind_parameter("prompt_tuning.methods.Prompt.initializer", prompts.random_uniform())
  return run.configured_run_config(overrides)


def plan_report(cfg: run.RunConfig, mesh: tuple[int, int] | None, device: str | None, search: bool) -> str:
  """What `prompt-tuning plan` prints."""
  planner = Planner(cfg)
  settings = planner.base_settings()
  if mesh is not None:
    settings = dataclasses.replace(settings, data=mesh[0], model=mesh[1])
  base = planner.estimate(settings)
  parts = [format_estimate(planner, base, device)]
  if device and not base.fits(device):
    parts.append(format_suggestions(planner, base, *suggestions(planner, base, device), device))
  if search:
    target = device or "h100"
    best = smallest_mesh(planner, target)
    parts.append(
      f"smallest mesh on {target} with these memory settings: "
      + (f"{best.settings.mesh_text()} ({_bytes(best.memory.total)} per device)" if best else "none up to 1,024")
    )
  return "\n".join(parts)


def main(argv: list[str]) -> int:
  """`prompt-tuning plan`: parses the gin flags as `train` does, plans, prints."""
  parser = argparse.ArgumentParser(prog="prompt-tuning plan", description=__doc__.splitlines()[0])
  gin_config.add_gin_flags(parser)
  parser.add_argument("--mesh", default=None, help="DATAxMODEL devices, e.g. 1x8 (default: 1 x NUM_PARTITIONS)")
  parser.add_argument("--device", default=None, help=f"one of {', '.join(DEVICES)}: does it fit, and if not, how")
  parser.add_argument("--search", action="store_true", help="also find the smallest mesh it fits on (--device's)")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks")
  bindings, rest = gin_config.split_gin_flags(argv)
  args = parser.parse_args(rest)
  mesh = parse_mesh(args.mesh) if args.mesh else None
  device = check_device(args.device) if args.device else None
  gin_config.configure_from_flags(args, bindings, check_unread=True)
  print(plan_report(planning_run_config(), mesh, device, args.search), flush=True)
  return 0
