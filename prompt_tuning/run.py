"""Run setup shared by train, eval and infer: the run's settings, and the inference build.

- `RunConfig`: what every entry point shares (gin: `RunConfig.*`, bound by gin/runs/run_config.gin);
- `tuning_methods`, `tuned_model`, `pattern_of`: the methods a config names, the tuned model, the trainable set;
- `load_backbone`: the frozen backbone's config and host arrays;
- `build_inference`: what eval and infer need and nothing more: the trainable tree only (no optimizer state),
  in its folded serving form, and prediction and scoring jitted with explicit shardings;
- `build_serving`: what `prompt-tuning serve` needs: the backbone on the mesh with the run's precision settings
  (`serving_run_config`: the run's settings less what serving never reads);
- `plan`: the model and partition plan, computed abstractly; `abstract_training`: the training build's state and
  frozen tree as ShapeDtypeStructs with shardings, what `prompt_tuning.plan` compiles.

- `build_training`: the training build (state and optimizer state, checkpoints, compiled steps), used by
  `prompt_tuning.train` (as `train.build`). It and `abstract_training` place the tree by one `training_layout`.

Every model a command builds is built here: train, eval, infer, serve, plan and sweeps call these functions.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import gin
import jax
import numpy as np
import optax

from prompt_tuning import combine, optim, partitioning, trainer, validation
from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.training import (
  TrainingCheckpoints,
  backbone_fingerprint,
  check_fingerprint,
  dtype_names,
)
from prompt_tuning.methods.base import Method, trainable_pattern
from prompt_tuning.methods.prompt import Prompt
from prompt_tuning.tuning import TunedT5

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass
class RunConfig:
  """What train, eval and infer share: the backbone, the task, the tuned vectors, the mesh.

  Attributes:
    model_dir: checkpoints, metrics.jsonl and TensorBoard summaries (MODEL_DIR).
    initial_checkpoint_path: the frozen backbone, T5X or Hugging Face (INITIAL_CHECKPOINT_PATH);
      None initializes the backbone randomly from `model_size` and `seed` (pretraining from scratch,
      with a trainable pattern that covers the backbone).
    mixture_or_task_name: a registered seqio task or mixture (MIXTURE_OR_TASK_NAME).
    task_feature_lengths: {"inputs": ..., "targets": ...} (TASK_FEATURE_LENGTHS).
    model_size: named size for T5X checkpoints, which carry no config.
    prompt: the soft prompt, `prompt_tuning.methods.Prompt` (gin: `@prompt_tuning.methods.Prompt()`, its length
      PROMPT_LENGTH and its initializer PROMPT_INIT); None, or a length of 0: no prompt.
    prefix: `prompt_tuning.methods.PrefixSettings` for prefix tuning (`prompt_tuning.methods.prefix`).
    methods: further tuning methods (`prompt_tuning.methods`: IA3, PerLayerPrompt, ...), e.g.
      `RunConfig.methods = [@prompt_tuning.methods.IA3()]`.
    prompt_combination: where input-side vectors join the embedded input, in training, eval and infer
      (`prompt_tuning.combine.MODES`: prefix, prefix_after_bos, suffix, suffix_after_eos) (PROMPT_COMBINATION).
    trainable_pattern: regex over parameter paths; None (default): the subtrees of the methods in use
      (`methods.base.trainable_pattern`); `.*` is model tuning.
    batch_size: global batch size (all processes together).
    num_microbatches: gradient accumulation slices per step.
    optimizer: an optax transformation (default: Adafactor with the paper's settings).
    z_loss: coefficient of T5X's z-loss.
    class_label_softmax: normalize the decoder's softmax over the tokens of the task's class labels and EOS only,
      in the training loss, the teacher-forced evaluation and label scoring (infer's score mode, eval's
      accuracy): the verbalizer cross-entropy of Schick & Schuetze 2021. Off by default (T5X and Lester et al. use
      the whole vocabulary). For small frozen models, where a prompt teaches the answer format long before the
      answer: on the demo model, a 20-token prompt on WordNet's animal-or-plant question (Adafactor lr 0.3) still
      answers "plant" to everything after 300-600 steps with the whole vocabulary, and reaches 70.8% in 400 with
      the labels' (prompt_tuning/assets/demo_t5/MODEL_CARD.md). Greedy decoding is not restricted. Needs a task
      with class labels.
    dropout_rate: override the backbone's dropout.
    activation_dtype: the backbone's activations, 'float32' or 'bfloat16' (ACTIVATION_DTYPE, T5Config.dtype);
      attention logits and softmax, layer norm statistics, the loss and the logits stay float32.
    frozen_dtype: None (the dtype the loader returns: float32) or 'bfloat16' (or 'float32'): the frozen backbone
      is cast to it as it is read (FROZEN_DTYPE). A frozen model needs no float32 master weights; trainable
      backbone weights do, so a trainable pattern that selects any is refused with it.
    remat_policy: 'none', 'full' or 'dots_saveable': what each layer recomputes in the backward pass
      (REMAT_POLICY, T5Config.remat).
    max_encoder_length: refuse prompt + input lengths above this.
    keep_checkpoints: checkpoints kept (the newest).
    seed: initialization, data order and dropout.
    shuffle: shuffle the training data.
    num_partitions: model-parallel devices; the rest is data parallel.
    mesh_shape: explicit (data, model) mesh.
    pack: pack several examples into each row of the training and teacher-forced evaluation batches (PACK; t5x's
      `train/utils.DatasetConfig.pack` and `train_eval/...pack`): seqio's packing, every example with its own
      prompt (`prompt_tuning.inputs`, `prompt_tuning.combine.join_packed`) and attention kept within it, so each
      example gets the loss and gradients it gets unpacked. BATCH_SIZE counts rows, as in T5X, so a packed step
      sees more examples. Encoder-decoder models only; decoding and scoring (eval's metrics, infer) never pack.
    bucket_by_length: unpacked training batches of examples of similar length, each padded to a power-of-two bucket
      length instead of the full inputs length (BUCKET_BY_LENGTH; `prompt_tuning.inputs.length_bucketed`: tf.data's
      bucket_by_sequence_length): the step compiles once per bucket, and each example gets the loss and gradients
      it gets at the full length. The data order is deterministic (a resume stays exact) but not the unbucketed
      one. One process only (each process would pick its own bucket); not with PACK (packed rows are full).
    buckets_per_doubling: with bucket_by_length, the bucket lengths per doubling of the length
      (BUCKETS_PER_DOUBLING): 1, powers of two; 2, also about 1.41x each (`prompt_tuning.inputs.bucket_lengths`):
      less padding for twice the compiled shapes (BoolQ-like lengths with a 100-vector prompt: 78% of the encoder's
      positions used -> 90%, benchmarks/RESULTS.md).
  """

  model_dir: str = gin.REQUIRED
  initial_checkpoint_path: str = gin.REQUIRED
  mixture_or_task_name: str = gin.REQUIRED
  task_feature_lengths: Mapping[str, int] = gin.REQUIRED
  model_size: str | None = None
  prompt: Prompt | None = None
  prefix: Any = None
  methods: tuple[Method, ...] = ()
  prompt_combination: str = combine.DEFAULT_MODE
  trainable_pattern: str | None = None
  batch_size: int = 32
  num_microbatches: int = 1
  optimizer: optax.GradientTransformation | None = None
  z_loss: float = 1e-4
  class_label_softmax: bool = False
  dropout_rate: float | None = None
  activation_dtype: str = "float32"
  frozen_dtype: str | None = None
  remat_policy: str = "none"
  max_encoder_length: int | None = None
  keep_checkpoints: int | None = 3
  seed: int = 0
  shuffle: bool = True
  num_partitions: int = 1
  mesh_shape: tuple[int, int] | None = None
  pack: bool = False
  bucket_by_length: bool = False
  buckets_per_doubling: int = 1

  def __post_init__(self):
    for name in ("model_dir", "initial_checkpoint_path", "mixture_or_task_name", "task_feature_lengths"):
      value = getattr(self, name)
      if value is gin.REQUIRED or value == "" or (value is None and name != "initial_checkpoint_path"):
        raise ValueError(f"{name} is required: set it in a gin file or with --gin.{name.upper()}=...")
    if self.initial_checkpoint_path is None and not self.model_size:
      raise ValueError(
        "INITIAL_CHECKPOINT_PATH=None (random initialization) needs MODEL_SIZE: include a models/ and a "
        "models/sizes/ gin file, or set RunConfig.model_size."
      )
    # '~/runs/x' is the user's home, as in a shell; unexpanded it would create a folder named '~' here.
    for name in ("model_dir", "initial_checkpoint_path"):
      value = getattr(self, name)
      if isinstance(value, str) and value.startswith("~"):
        setattr(self, name, os.path.expanduser(value))
    self.methods = tuple(self.methods)
    combine.check_mode(self.prompt_combination)
    validation.check_run_config(self)


def tuning_methods(cfg: RunConfig) -> tuple[Method, ...]:
  """The methods a run's settings name: the prompt (when it has vectors: PROMPT_LENGTH > 0), the prefix, then
  `methods`."""
  methods: list[Method] = []
  if cfg.prompt is not None and cfg.prompt.used:
    methods.append(cfg.prompt)
  if cfg.prefix is not None:
    methods.append(cfg.prefix)
  return tuple(methods) + tuple(cfg.methods)


def tuned_model(cfg: RunConfig, config) -> TunedT5:
  return TunedT5(config, tuning_methods(cfg), cfg.prompt_combination)


def pattern_of(cfg: RunConfig, tuned: TunedT5) -> str:
  """The run's trainable set: TRAINABLE_PATTERN when given, else the methods' subtrees."""
  return cfg.trainable_pattern if cfg.trainable_pattern is not None else trainable_pattern(tuned.methods)


def with_run_settings(cfg: RunConfig, config):
  """`config` with the run's DROPOUT_RATE, ACTIVATION_DTYPE, FROZEN_DTYPE (its param_dtype) and REMAT_POLICY."""
  changes = {"dtype": cfg.activation_dtype, "remat": cfg.remat_policy}
  if cfg.frozen_dtype is not None:
    changes["param_dtype"] = cfg.frozen_dtype
  if cfg.dropout_rate is not None:
    changes["dropout_rate"] = cfg.dropout_rate
  return config.replace(**changes)


def check_frozen_dtype(cfg: RunConfig, config) -> None:
  """Refuses FROZEN_DTYPE with a trainable set that takes backbone weights (model tuning needs float32 masters).

  Raises:
    validation.SettingError: naming FROZEN_DTYPE, TRAINABLE_PATTERN and a trainable weight.
  """
  from prompt_tuning.models.t5 import param_shapes

  if cfg.frozen_dtype in (None, "float32"):
    return
  pattern = pattern_of(cfg, tuned_model(cfg, config))
  trained = [path for path in optim._flat(param_shapes(config)) if re.search(pattern, f"t5/{path}")]
  if trained:
    raise validation.SettingError(
      f"FROZEN_DTYPE={cfg.frozen_dtype!r} casts the frozen backbone, but TRAINABLE_PATTERN {pattern!r} trains "
      f"{len(trained)} backbone weights (t5/{trained[0]}, ...), which need float32 master weights: set "
      "FROZEN_DTYPE = None for model tuning, or train only the tuning methods' vectors."
    )


def load_backbone(cfg: RunConfig):
  """The backbone's config (with the run's settings) and host arrays, in FROZEN_DTYPE: from
  INITIAL_CHECKPOINT_PATH, or random for pretraining.

  Raises:
    validation.SettingError: FROZEN_DTYPE with a trainable backbone (`check_frozen_dtype`); with MODEL_SIZE known,
      before anything is read.
  """
  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.models.configs import get_config
  from prompt_tuning.models.t5 import init_params

  if cfg.model_size:
    check_frozen_dtype(cfg, with_run_settings(cfg, get_config(cfg.model_size)))
  if cfg.initial_checkpoint_path is None:
    config = with_run_settings(cfg, get_config(cfg.model_size))
    params = jax.device_get(init_params(config, jax.random.key(cfg.seed)))
  else:
    config, params = load_pretrained(cfg.initial_checkpoint_path, config=cfg.model_size, dtype=cfg.frozen_dtype)
    config = with_run_settings(cfg, config)
  check_frozen_dtype(cfg, config)
  return config, params


@jax.jit
def _all_finite(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Whether each array holds only finite values (jitted once, reused by every build of the same shapes)."""
  return {k: jax.numpy.all(jax.numpy.isfinite(x)) for k, x in arrays.items()}


def check_backbone_finite(backbone, path: str | None) -> None:
  """Refuses a backbone holding NaN or infinite values (a damaged copy): otherwise the first step's loss is NaN, and
  the learning rate gets the blame. One reduction per array, on device, where the array lies.

  Raises:
    CheckpointError: naming INITIAL_CHECKPOINT_PATH and the arrays, and what to do.
  """
  from prompt_tuning.checkpoints.errors import format_list

  if path is None:
    return
  flat = optim._flat(backbone)
  floats = {name: x for name, x in flat.items() if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)}
  finite = jax.device_get(_all_finite(floats))
  bad = sorted(name for name, ok in finite.items() if not ok)
  if bad:
    raise CheckpointError(
      f"the backbone at INITIAL_CHECKPOINT_PATH {path} holds NaN or infinite values in:\n{format_list(bad, limit=5)}\n"
      "A trained checkpoint never does: its files were damaged (a bad copy, download or disk). Copy or download "
      "it again."
    )


def check_frozen_inputs(meta: Mapping[str, Any], tuned: TunedT5, model_dir) -> None:
  """Refuses to resume a run whose methods now read other frozen vectors than it was trained with (ATTEMPT's
  sources: `Method.frozen_inputs`); checkpoints that record none (older runs) are not compared.

  Raises:
    CheckpointError: naming the method, what the checkpoint records and what this config gives.
  """
  recorded = meta.get("frozen_inputs") or {}
  for method in tuned.methods:
    saved, now = recorded.get(method.name), method.frozen_inputs()
    if saved is not None and saved != now:
      raise CheckpointError(
        f"the checkpoints in {model_dir} trained {method.name!r} with the frozen inputs {saved}; this config gives "
        f"{now}. Give the run the inputs it was trained with (for ATTEMPT: ATTEMPT_SOURCES and ATTEMPT_LIBRARY), or "
        "a fresh MODEL_DIR."
      )


def abstract_vectors(tuned: TunedT5, backbone_shapes):
  return jax.eval_shape(tuned.init_vectors, jax.random.key(0), backbone_shapes)


def class_label_ids(mixture_or_task_name: str) -> tuple[int, ...]:
  """The sorted token ids of the task's class labels, and EOS: what `class_label_softmax` normalizes over.

  Raises:
    ValueError: the task declares no class labels.
  """
  from prompt_tuning import inputs
  from prompt_tuning.data import get_class_labels

  labels = get_class_labels(mixture_or_task_name)
  if not labels:
    raise ValueError(
      f"class_label_softmax needs class labels, and task {mixture_or_task_name!r} declares none: register it with "
      "class_labels=[...] (prompt_tuning.data.register_local_task) or set RunConfig.class_label_softmax = False."
    )
  vocabulary = inputs.get_task(mixture_or_task_name).output_features["targets"].vocabulary
  return tuple(sorted({token for label in labels for token in vocabulary.encode(label)} | {vocabulary.eos_id}))


def planned_config(cfg: RunConfig):
  """The backbone's architecture without reading any array: MODEL_SIZE, else the metadata of
  INITIAL_CHECKPOINT_PATH (a Hugging Face config.json, a T5X checkpoint's shapes) when it exists.

  Raises:
    ValueError: neither is available, saying what to set.
  """

  from prompt_tuning.models.configs import get_config

  if cfg.model_size:
    return get_config(cfg.model_size)
  path = cfg.initial_checkpoint_path
  if isinstance(path, str) and (os.path.exists(os.path.expanduser(path)) or path.startswith("gs://")):
    from prompt_tuning.checkpoints import pretrained_config

    return pretrained_config(path)
  raise ValueError(
    "planning needs MODEL_SIZE (a models/ and a models/sizes/ gin file, or RunConfig.model_size), or an "
    "INITIAL_CHECKPOINT_PATH that exists here (only its metadata is read)."
  )


def plan(cfg: RunConfig, mesh=None) -> dict[str, Any]:
  """The model and partition plan of a run, computed abstractly (no array is allocated or read).

  Needs MODEL_SIZE, or an INITIAL_CHECKPOINT_PATH whose metadata says the architecture (`planned_config`). `mesh`
  may be a `jax.sharding.AbstractMesh` (a mesh of devices this machine lacks). Returns the T5Config (with the run's
  precision and remat settings), the shapes of the whole parameter tree, their shardings on the mesh, and the
  trainable and total parameter counts.
  """
  from prompt_tuning.models.t5 import param_shapes

  config = with_run_settings(cfg, planned_config(cfg))
  tuned = tuned_model(cfg, config)
  backbone = param_shapes(config)
  shapes = {"t5": backbone, **abstract_vectors(tuned, backbone)}
  mesh = mesh if mesh is not None else partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape)
  shardings = partitioning.shardings_for(tuned.logical_axes(shapes), mesh, partitioning.logical_rules())
  trainable, frozen = optim.partition(shapes, pattern_of(cfg, tuned), allow_empty=True)
  return {
    "config": config,
    "shapes": shapes,
    "shardings": shardings,
    "trainable_count": optim.count(trainable),
    "total_count": optim.count(trainable) + optim.count(frozen),
  }


def make_optimizer(cfg: RunConfig, trainable_axes) -> optax.GradientTransformation:
  """RunConfig.optimizer, or Adafactor with the paper's settings (factoring by the trainable tree's logical axes)."""
  return cfg.optimizer or optim.adafactor(logical_axes=trainable_axes)


@dataclasses.dataclass
class Layout:
  """Where a training build puts the tree {"t5": backbone, method: vectors, ...} (`training_layout`).

  Attributes:
    pattern: the trainable set (`pattern_of`).
    vectors: the methods' fresh vectors, as ShapeDtypeStructs.
    axes: the logical axis names of the whole tree.
    shardings: the whole tree's NamedShardings on the mesh.
    optimizer: the run's optimizer (Adafactor factors by the trainable tree's axes).
  """

  pattern: str
  vectors: Any
  axes: Any
  shardings: Any
  optimizer: optax.GradientTransformation


def training_layout(cfg: RunConfig, tuned: TunedT5, backbone, mesh) -> Layout:
  """The layout of the training build of `tuned` over `backbone` (arrays or ShapeDtypeStructs) on `mesh` (concrete
  or abstract): what `build_training` and `abstract_training` share."""
  pattern = pattern_of(cfg, tuned)
  vectors = abstract_vectors(tuned, backbone)
  axes = tuned.logical_axes({"t5": backbone, **vectors})
  shardings = partitioning.shardings_for(axes, mesh, partitioning.logical_rules())
  trainable_axes, _ = optim.partition(axes, pattern, allow_empty=True)
  return Layout(pattern, vectors, axes, shardings, make_optimizer(cfg, trainable_axes))


def architecture(config):
  """`config` less what leaves the parameter tree's shapes alone (activation dtype, remat, dropout, the parameters'
  dtype), so that the (cached) abstract trees of a run's variants are traced once."""
  return config.replace(dtype="float32", remat="none", param_dtype="float32", dropout_rate=0.0)


def backbone_shapes(config) -> dict[str, Any]:
  """The backbone's ShapeDtypeStructs, in `config.param_dtype` (FROZEN_DTYPE's cast)."""
  from prompt_tuning.models.t5 import param_shapes

  dtype = config.parameter_dtype
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), param_shapes(architecture(config)))


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _like_trainable(tree, trainable, trainable_shardings, replicated):
  """Shardings for optimizer-state leaves: a trainable leaf's of the same shape (moments), else replicated (factored
  second moments, counts)."""
  by_shape = {}
  for x, s in zip(jax.tree.leaves(trainable), jax.tree.leaves(trainable_shardings)):
    by_shape.setdefault(tuple(x.shape), s)
  return jax.tree.map(lambda x: by_shape.get(tuple(x.shape), replicated), tree)


def abstract_training(cfg: RunConfig, config, mesh):
  """(tuned, state, frozen, optimizer) of a run as ShapeDtypeStructs with shardings on `mesh` (concrete or
  abstract): what `build_training` makes, without allocating or reading anything. `config` is the backbone's
  (e.g. fewer layers than `cfg` names)."""
  tuned = tuned_model(cfg, config)
  backbone = backbone_shapes(config)
  layout = training_layout(cfg, tuned_model(cfg, architecture(config)), backbone, mesh)  # traced once per architecture
  shapes = _with_shardings({"t5": backbone, **layout.vectors}, layout.shardings)
  trainable, frozen = optim.partition(shapes, layout.pattern, allow_empty=True)
  state = jax.eval_shape(functools.partial(trainer.TrainState.create, optimizer=layout.optimizer), trainable)
  trainable_shardings = jax.tree.map(lambda x: x.sharding, trainable)
  replicated = partitioning.replicated(mesh)
  state_shardings = _like_trainable(state, trainable, trainable_shardings, replicated)
  state_shardings = state_shardings.replace(trainable=trainable_shardings)
  return tuned, _with_shardings(state, state_shardings), frozen, layout.optimizer


def jit_train_step(cfg: RunConfig, tuned: TunedT5, optimizer, state_shardings, frozen_shardings, mesh, output_ids):
  """The jitted train step, (state, frozen, batch, rng) -> (state, metrics), with explicit shardings; the state is
  donated. What training runs, and what `prompt_tuning.plan` compiles over abstract inputs."""
  step_fn = functools.partial(
    trainer.train_step,
    forward=tuned.forward,
    optimizer=optimizer,
    z_loss=cfg.z_loss,
    num_microbatches=cfg.num_microbatches,
    output_ids=output_ids,
  )
  batch_sharding, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, frozen_shardings, batch_sharding, repl),
    out_shardings=(state_shardings, repl),
    donate_argnums=(0,),
  )


@dataclasses.dataclass
class Run:
  """What the loop needs, built once at start-up."""

  tuned: TunedT5
  mesh: Any
  frozen: Any
  state: trainer.TrainState
  train_step: Any
  eval_step: Any
  checkpoints: TrainingCheckpoints
  start_step: int
  data_position: int
  fingerprint: str
  trainable_count: int
  total_count: int
  backbone_dtype: str = "float32"  # the backbone's dtypes (checkpoints.training.dtype_names), recorded in the meta
  resumed_backbone_dtype: str | None = None  # what the resumed checkpoint was trained against (its meta)
  output_ids: tuple[int, ...] | None = None  # the softmax's ids under class_label_softmax (trainer.restrict_logits)

  @property
  def trainable(self) -> Any:
    return self.state.trainable


def build_training(cfg: RunConfig) -> Run:
  """The training build: mesh, backbone, trainable state with its optimizer state (fresh or restored), the
  checkpoints and the compiled steps. Eval and infer use `build_inference`."""
  mesh = partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape)
  task = validation.check_task(cfg.mixture_or_task_name)
  config, backbone_host = load_backbone(cfg)
  validation.check_packing(cfg.pack, config.takes_packed_rows)
  validation.check_vocabulary(task, config.vocab_size)
  tuned = tuned_model(cfg, config)
  pattern = pattern_of(cfg, tuned)
  tuned.check_lengths(cfg.task_feature_lengths, cfg.max_encoder_length)

  abstract_backbone = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), backbone_host)
  layout = training_layout(cfg, tuned, abstract_backbone, mesh)
  shardings, optimizer = layout.shardings, layout.optimizer
  backbone = partitioning.with_sharding(backbone_host, shardings["t5"])
  del backbone_host
  check_backbone_finite(backbone, cfg.initial_checkpoint_path)
  fingerprint = backbone_fingerprint(backbone)
  tuned.check_backbone(lambda: fingerprint, cfg.initial_checkpoint_path)
  vector_shardings = {k: v for k, v in shardings.items() if k != "t5"}
  vectors = jax.jit(tuned.init_vectors, out_shardings=vector_shardings)(jax.random.key(cfg.seed), backbone)
  # Nothing trainable is allowed here (eval/infer of the frozen model as it is); train() refuses it.
  trainable, frozen = optim.partition({"t5": backbone, **vectors}, pattern, allow_empty=True)
  state = jax.jit(functools.partial(trainer.TrainState.create, optimizer=optimizer))(trainable)

  checkpoints = TrainingCheckpoints(cfg.model_dir, keep=cfg.keep_checkpoints)
  data_position, resumed_backbone_dtype = 0, None
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  if (restored := checkpoints.restore_newest_intact(abstract)) is not None:
    state, meta = restored
    check_fingerprint(meta, backbone, cfg.initial_checkpoint_path)
    check_frozen_inputs(meta, tuned, cfg.model_dir)
    data_position, resumed_backbone_dtype = int(meta["data_position"]), meta.get("frozen_dtype")
    log.info("resumed from step %d of %s", int(state.step), cfg.model_dir)

  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  batch_sharding, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
  output_ids = class_label_ids(cfg.mixture_or_task_name) if cfg.class_label_softmax else None
  train_step = jit_train_step(cfg, tuned, optimizer, state_shardings, frozen_shardings, mesh, output_ids)
  eval_step = jax.jit(
    functools.partial(trainer.eval_step, forward=tuned.forward, z_loss=cfg.z_loss, output_ids=output_ids),
    in_shardings=(state_shardings.trainable, frozen_shardings, batch_sharding),
    out_shardings=repl,
  )
  return Run(
    tuned=tuned,
    mesh=mesh,
    frozen=frozen,
    state=state,
    train_step=train_step,
    eval_step=eval_step,
    checkpoints=checkpoints,
    start_step=int(state.step),
    data_position=data_position,
    fingerprint=fingerprint,
    trainable_count=optim.count(trainable),
    total_count=optim.count(trainable) + optim.count(frozen),
    output_ids=output_ids,
    backbone_dtype=dtype_names(backbone),
    resumed_backbone_dtype=resumed_backbone_dtype,
  )


@dataclasses.dataclass
class Inference:
  """What eval and infer need: the frozen backbone, the trainable tree (folded, no optimizer state), the steps.

  Attributes:
    tuned: the backbone's architecture and the tuning methods.
    mesh: the device mesh.
    frozen: the frozen tree ({"t5": backbone}, less what the trainable pattern selects).
    trainable: the trainable tree in its serving form (the prefix MLP folded away).
    eval_step, score_step: jitted with explicit shardings: (trainable, frozen, batch) -> metrics / scores [B].
    output_ids: the softmax's ids under class_label_softmax.
    step: the training step of the trainable tree (0: not trained).
    source: where the trainable tree came from (for logs).
  """

  tuned: TunedT5
  mesh: Any
  frozen: Any
  trainable: Any
  eval_step: Any
  score_step: Any
  output_ids: tuple[int, ...] | None
  step: int
  source: str


def _restore_trainable(cfg: RunConfig, tuned: TunedT5, backbone, pattern: str):
  """(trainable tree, step, source): the methods' exports of the latest checkpoint, folded (the MLP of a prefix is
  not read: Li & Liang, section 4.3), else fresh initialization (e.g. a prompt from a file); None when the trainable
  set covers backbone weights (model tuning), which only the training checkpoint holds."""
  if any(re.search(pattern, f"t5/{path}") for path in optim._flat(backbone)):
    return None
  checkpoints = TrainingCheckpoints(cfg.model_dir, keep=None, async_save=False)
  step = checkpoints.latest_step()
  # The methods' exports of that step; on gs:// none (the methods read their exports from local files), so the
  # training checkpoint, which holds the same vectors, is read.
  folder = checkpoints.export_folder(step) if step is not None and "://" not in str(cfg.model_dir) else None
  folder = folder if folder is not None and folder.is_dir() else None
  checkpoints.close()
  if step is not None and folder is None:
    return None  # a checkpoint without exports (an older run): the training build restores it
  if folder is not None:
    try:
      loaded = {m.name: jax.tree.map(np.asarray, m.load(folder, tuned.config)) for m in tuned.methods}
    except FileNotFoundError:
      return None
    except (CheckpointError, ValueError) as e:  # a damaged export: the training checkpoint holds the same vectors
      log.warning("the exports in %s cannot be used (%s); reading training checkpoint %d instead.", folder, e, step)
      return None
    expected = jax.eval_shape(lambda b: tuned.fold(tuned.init_vectors(jax.random.key(0), b)), backbone)
    differing = _differing_shapes(expected, loaded)
    if differing:
      log.warning(
        "the exports in %s do not fit this run (%s); reading training checkpoint %d instead.", folder, differing, step
      )
      return None
    return loaded, step, f"the exports of step {step} in {folder}"
  vectors = jax.jit(tuned.init_vectors)(jax.random.key(cfg.seed), backbone)
  return tuned.fold(jax.device_get(vectors)), 0, "the initializers (no checkpoint in MODEL_DIR)"


def _differing_shapes(expected, loaded) -> str:
  """'prompt: (5, 256), expected (20, 256)' for each array whose path or shape differs; '' when all fit."""

  def shapes(tree):
    return {jax.tree_util.keystr(path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

  want, have = shapes(expected), shapes(loaded)
  return "; ".join(
    f"{key}: {have.get(key, 'missing')}, expected {want.get(key, 'nothing')}"
    for key in sorted(set(want) | set(have))
    if want.get(key) != have.get(key)
  )


def build_inference(cfg: RunConfig) -> Inference:
  """The inference build: backbone, the trainable tree restored without optimizer state and folded once, and the
  jitted steps. Falls back to the training checkpoint's state where no export holds the trainable tree (model
  tuning, runs from before exports)."""
  mesh = partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape)
  task = validation.check_task(cfg.mixture_or_task_name)
  config, backbone_host = load_backbone(cfg)
  validation.check_packing(cfg.pack, config.takes_packed_rows)
  validation.check_vocabulary(task, config.vocab_size)
  tuned = tuned_model(cfg, config)
  tuned.check_lengths(cfg.task_feature_lengths, cfg.max_encoder_length)
  pattern = pattern_of(cfg, tuned)
  output_ids = class_label_ids(cfg.mixture_or_task_name) if cfg.class_label_softmax else None
  restored = _restore_trainable(cfg, tuned, backbone_host, pattern)
  if restored is None:
    run = build_training(cfg)
    run.checkpoints.close()
    trainable, frozen, step, source = run.state.trainable, run.frozen, int(run.state.step), "the training checkpoint"
  else:
    vectors, step, source = restored
    axes = tuned.logical_axes(jax.eval_shape(lambda: {"t5": backbone_host, **vectors}))
    params = partitioning.with_sharding(
      {"t5": backbone_host, **vectors}, partitioning.shardings_for(axes, mesh, partitioning.logical_rules())
    )
    check_backbone_finite(params["t5"], cfg.initial_checkpoint_path)
    tuned.check_backbone(lambda: backbone_fingerprint(params["t5"]), cfg.initial_checkpoint_path)
    trainable, frozen = optim.partition(params, pattern, allow_empty=True)
  log.info("trainable vectors from %s", source)
  shardings = jax.tree.map(lambda x: x.sharding, (trainable, frozen))
  batch_sharding, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
  eval_step = jax.jit(
    functools.partial(trainer.eval_step, forward=tuned.forward, z_loss=cfg.z_loss, output_ids=output_ids),
    in_shardings=(*shardings, batch_sharding),
    out_shardings=repl,
  )
  score_step = jax.jit(
    functools.partial(trainer.score_step, forward=tuned.forward, output_ids=output_ids),
    in_shardings=(*shardings, batch_sharding),
    out_shardings=repl,
  )
  return Inference(tuned, mesh, frozen, trainable, eval_step, score_step, output_ids, step, source)


# What serving never reads, bound in its place (`configured_run_config`): MODEL_DIR and the task, and the tuning
# methods (a server's vectors come from its library, `prompt_tuning.serve`), so the backbone is all it builds.
SERVING_PLACEHOLDERS = {
  "model_dir": "(not read by serving)",
  "mixture_or_task_name": "(not read by serving)",
  "task_feature_lengths": {"inputs": 1, "targets": 1},
  "prompt": None,
  "prefix": None,
  "methods": (),
  "trainable_pattern": None,
  "optimizer": None,
  "class_label_softmax": False,
  "pack": False,
}


def configured_run_config(placeholders: Mapping[str, Any]) -> RunConfig:
  """RunConfig as gin binds it, with `placeholders` ({field: value}) bound in place of the fields a build never
  reads. Bound, not passed: gin evaluates a parameter's bound references (a task registration, a class-label
  initializer that reads the task) even when the call passes the parameter."""
  with gin.unlock_config():
    for name, value in placeholders.items():
      gin.bind_parameter(f"prompt_tuning.run.RunConfig.{name}", value)
  return RunConfig()


def serving_run_config() -> RunConfig:
  """The run's settings as serving reads them: the backbone (INITIAL_CHECKPOINT_PATH, MODEL_SIZE), its precision
  (ACTIVATION_DTYPE, FROZEN_DTYPE, REMAT_POLICY, DROPOUT_RATE) and the mesh (NUM_PARTITIONS, RunConfig.mesh_shape)."""
  return configured_run_config(SERVING_PLACEHOLDERS)


@dataclasses.dataclass
class Serving:
  """The serving build: the frozen backbone on the mesh (the vectors served come from the server's library).

  Attributes:
    config: the backbone's T5Config with the run's ACTIVATION_DTYPE (`dtype`), FROZEN_DTYPE (`param_dtype`) and
      REMAT_POLICY.
    params: the backbone on `mesh`, in FROZEN_DTYPE, sharded by its logical axes.
    mesh: the device mesh.
  """

  config: Any
  params: Any
  mesh: Any


def build_serving(cfg: RunConfig) -> Serving:
  """The serving build: the backbone read as training reads it (`load_backbone`: FROZEN_DTYPE's cast as it is
  read, the run's precision settings in its config), placed on the mesh by its logical axes."""
  from prompt_tuning.models.t5 import param_logical_axes

  mesh = partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape)
  config, backbone_host = load_backbone(cfg)
  shardings = partitioning.shardings_for(param_logical_axes(config), mesh, partitioning.logical_rules())
  return Serving(config, partitioning.with_sharding(backbone_host, shardings), mesh)
