"""The training entry point (gin-configured, t5x-style).

    prompt-tuning train --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'"
    python -m prompt_tuning.train --gin_file=... (the same)

Restore order at start-up (ARCHITECTURE.md): the latest training checkpoint in
MODEL_DIR; else the trainable state given explicitly (a prompt file or PEFT
adapter through `prompt_tuning.prompts.from_file`); else fresh initialization.
The frozen backbone always comes from INITIAL_CHECKPOINT_PATH.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gin
import jax
import optax

from prompt_tuning import combine, optim, partitioning, trainer
from prompt_tuning.checkpoints.training import TrainingCheckpoints, backbone_fingerprint, check_fingerprint
from prompt_tuning.methods.base import Method, trainable_pattern
from prompt_tuning.methods.prompt import Prompt
from prompt_tuning.tuning import TunedT5

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """A run that cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


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
  output_ids: tuple[int, ...] | None = None  # the softmax's ids under class_label_softmax (trainer.restrict_logits)


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
    prompt_length: soft prompt positions (0: none; Lester et al.: 100); with `prompt_init`, the `Prompt` method.
    prompt_init: prompt initializer (`prompt_tuning.prompts`).
    prefix: `prompt_tuning.prefixes.PrefixSettings` for prefix tuning (`prompt_tuning.methods.prefix`).
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
    max_encoder_length: refuse prompt + input lengths above this.
    keep_checkpoints: checkpoints kept (the newest).
    seed: initialization, data order and dropout.
    shuffle: shuffle the training data.
    num_partitions: model-parallel devices; the rest is data parallel.
    mesh_shape: explicit (data, model) mesh.
  """

  model_dir: str = gin.REQUIRED
  initial_checkpoint_path: str = gin.REQUIRED
  mixture_or_task_name: str = gin.REQUIRED
  task_feature_lengths: Mapping[str, int] = gin.REQUIRED
  model_size: str | None = None
  prompt_length: int = 100
  prompt_init: Any = None
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
  max_encoder_length: int | None = None
  keep_checkpoints: int | None = 3
  seed: int = 0
  shuffle: bool = True
  num_partitions: int = 1
  mesh_shape: tuple[int, int] | None = None

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
    self.methods = tuple(self.methods)
    combine.check_mode(self.prompt_combination)
    if self.batch_size < 1 or self.num_microbatches < 1 or self.batch_size % self.num_microbatches:
      raise ValueError(
        f"batch_size {self.batch_size} must be a positive multiple of num_microbatches {self.num_microbatches}."
      )


def tuning_methods(cfg: RunConfig) -> tuple[Method, ...]:
  """The methods a run's settings name: the prompt (PROMPT_LENGTH > 0), the prefix, then `methods`."""
  methods: list[Method] = []
  if cfg.prompt_length:
    methods.append(Prompt(cfg.prompt_length, cfg.prompt_init))
  if cfg.prefix is not None:
    methods.append(cfg.prefix)
  return tuple(methods) + tuple(cfg.methods)


def tuned_model(cfg: RunConfig, config) -> TunedT5:
  return TunedT5(config, tuning_methods(cfg), cfg.prompt_combination)


def pattern_of(cfg: RunConfig, tuned: TunedT5) -> str:
  """The run's trainable set: TRAINABLE_PATTERN when given, else the methods' subtrees."""
  return cfg.trainable_pattern if cfg.trainable_pattern is not None else trainable_pattern(tuned.methods)


def _load_backbone(cfg: RunConfig):
  """The backbone's config and host arrays: from INITIAL_CHECKPOINT_PATH, or random for pretraining."""
  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.models.configs import get_config
  from prompt_tuning.models.t5 import init_params

  if cfg.initial_checkpoint_path is None:
    config = get_config(cfg.model_size)
    params = jax.device_get(jax.jit(init_params, static_argnums=0)(config, jax.random.key(cfg.seed)))
  else:
    config, params = load_pretrained(cfg.initial_checkpoint_path, config=cfg.model_size)
  if cfg.dropout_rate is not None:
    config = config.replace(dropout_rate=cfg.dropout_rate)
  return config, params


def _abstract_vectors(tuned: TunedT5, backbone_shapes):
  return jax.eval_shape(tuned.init_vectors, jax.random.key(0), backbone_shapes)


def build(cfg: RunConfig) -> Run:
  """Mesh, backbone, trainable state (fresh or restored) and the compiled steps."""
  mesh = partitioning.make_mesh(cfg.num_partitions, cfg.mesh_shape)
  rules = partitioning.logical_rules()
  config, backbone_host = _load_backbone(cfg)
  tuned = tuned_model(cfg, config)
  pattern = pattern_of(cfg, tuned)
  if not config.decoder_only:
    tuned.check_lengths(cfg.task_feature_lengths["inputs"], cfg.max_encoder_length)

  backbone_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), backbone_host)
  axes = tuned.logical_axes(_abstract_vectors(tuned, backbone_shapes))
  shardings = partitioning.shardings_for(axes, mesh, rules)
  backbone = partitioning.with_sharding(backbone_host, shardings["t5"])
  del backbone_host
  vector_shardings = {k: v for k, v in shardings.items() if k != "t5"}
  vectors = jax.jit(tuned.init_vectors, out_shardings=vector_shardings)(jax.random.key(cfg.seed), backbone)
  # Nothing trainable is allowed here (eval/infer of the frozen model as it is); train() refuses it.
  trainable, frozen = optim.partition({"t5": backbone, **vectors}, pattern, allow_empty=True)
  trainable_axes, _ = optim.partition(axes, pattern, allow_empty=True)
  optimizer = cfg.optimizer or optim.adafactor(logical_axes=trainable_axes)
  state = jax.jit(functools.partial(trainer.TrainState.create, optimizer=optimizer))(trainable)

  fingerprint = backbone_fingerprint(backbone)
  checkpoints = TrainingCheckpoints(cfg.model_dir, keep=cfg.keep_checkpoints)
  data_position = 0
  if checkpoints.latest_step() is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    state, meta = checkpoints.restore(abstract)
    check_fingerprint(meta, fingerprint, cfg.initial_checkpoint_path)
    data_position = int(meta["data_position"])
    log.info("resumed from step %d of %s", int(state.step), cfg.model_dir)

  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  batch_sharding, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
  output_ids = class_label_ids(cfg.mixture_or_task_name) if cfg.class_label_softmax else None
  step_fn = functools.partial(
    trainer.train_step,
    forward=tuned.forward,
    optimizer=optimizer,
    z_loss=cfg.z_loss,
    num_microbatches=cfg.num_microbatches,
    output_ids=output_ids,
  )
  train_step = jax.jit(
    step_fn,
    in_shardings=(state_shardings, frozen_shardings, batch_sharding, repl),
    out_shardings=(state_shardings, repl),
    donate_argnums=(0,),
  )
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
  )


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


def plan(cfg: RunConfig, mesh=None) -> dict[str, Any]:
  """The model and partition plan of a run, computed abstractly (nothing is allocated or read).

  Needs `cfg.model_size` (the named size). Returns the T5Config, the shapes of
  the whole parameter tree, their shardings on the mesh, and the trainable and
  total parameter counts.
  """
  from prompt_tuning.models.configs import get_config
  from prompt_tuning.models.t5 import param_shapes

  if not cfg.model_size:
    raise ValueError("plan() needs MODEL_SIZE (a models/ and a models/sizes/ gin file, or RunConfig.model_size).")
  config = get_config(cfg.model_size)
  if cfg.dropout_rate is not None:
    config = config.replace(dropout_rate=cfg.dropout_rate)
  tuned = tuned_model(cfg, config)
  backbone = param_shapes(config)
  shapes = {"t5": backbone, **_abstract_vectors(tuned, backbone)}
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


def _save(run: Run, cfg: RunConfig, step: int, data_position: int) -> None:
  meta = {
    "data_position": data_position,
    "backbone_fingerprint": run.fingerprint,
    "backbone_path": str(cfg.initial_checkpoint_path),
    "trainable_pattern": pattern_of(cfg, run.tuned),
    "prompt_length": cfg.prompt_length,
  }
  trainable = run.state.trainable if isinstance(run.state.trainable, dict) else {}
  run.checkpoints.save(step, run.state, meta, prompt=trainable.get("prompt"))
  if jax.process_index() == 0:
    export_methods(run.tuned, trainable, Path(cfg.model_dir) / "numpy_checkpoints" / f"checkpoint_{step}")


def export_methods(tuned: TunedT5, trainable: dict[str, Any], folder: Path) -> list[Path]:
  """Writes every trained method except the prompt (the checkpoint writes prompt.npy) in its folded, portable
  form: the prefix without its MLP (Li & Liang, section 4.3), IA3 scales, per-layer prompts; npy and safetensors."""
  written = []
  for method in tuned.methods:
    if method.name in trainable and method.name != "prompt":
      written += method.export(jax.device_get(trainable[method.name]), tuned.config, folder)
  return written


@gin.configurable
def train(
  run_config: RunConfig | None = None,
  num_train_steps: int = 30000,
  checkpoint_every: int = 1000,
  eval_every: int = 0,
  eval_split: str = "validation",
  eval_max_batches: int | None = None,
  log_every: int = 10,
  stop_after: int | None = None,
) -> dict[str, Any]:
  """Trains the trainable set (by default the prompt) on a seqio task; returns the last metrics.

  Args:
    run_config: the shared settings (default: `RunConfig()` as gin binds it).
    num_train_steps: total optimizer steps (a resumed run continues up to it).
    checkpoint_every: steps between checkpoints (one is always written at the end).
    eval_every: steps between evaluations on `eval_split`, and at the end (0: never).
    eval_split: the split evaluated during training.
    eval_max_batches: cap on evaluation batches.
    log_every: steps between metric writes.
    stop_after: stop (with a checkpoint) after this many steps of this invocation.

  Returns:
    The metrics of the last logged step and of the last evaluation.
  """
  cfg = run_config if run_config is not None else RunConfig()
  schedule = {
    "num_train_steps": num_train_steps,
    "checkpoint_every": checkpoint_every,
    "eval_every": eval_every,
    "eval_split": eval_split,
    "eval_max_batches": eval_max_batches,
    "log_every": log_every,
    "stop_after": stop_after,
  }
  Path(cfg.model_dir).mkdir(parents=True, exist_ok=True)
  from prompt_tuning import inputs, reporting

  run = build(cfg)
  if not run.trainable_count:
    run.checkpoints.close()
    raise optim.nothing_selected(pattern_of(cfg, run.tuned), run.frozen)
  local_batch = partitioning.local_batch_size(cfg.batch_size, run.mesh)
  reporter = reporting.Reporter(cfg.model_dir, total_steps=num_train_steps, start_step=run.start_step)
  reporter.text(
    f"trainable parameters: {run.trainable_count:,} of {run.total_count:,} "
    f"({100.0 * run.trainable_count / run.total_count:.4f}%)"
  )
  batches = inputs.train_batches(
    cfg.mixture_or_task_name,
    cfg.task_feature_lengths,
    local_batch,
    decoder_only=run.tuned.config.decoder_only,
    seed=cfg.seed,
    start_batch=run.data_position,
    shuffle=cfg.shuffle,
  )
  try:
    return _loop(run, cfg, schedule, batches, reporter)
  finally:
    reporter.close()
    run.checkpoints.close()


def _loop(run: Run, cfg: RunConfig, schedule: dict[str, Any], batches, reporter) -> dict[str, Any]:
  rng = jax.random.key(cfg.seed + 1)
  step, position = run.start_step, run.data_position
  end = schedule["num_train_steps"]
  if schedule["stop_after"] is not None:
    end = min(end, step + schedule["stop_after"])
  last: dict[str, Any] = {}
  tic = time.perf_counter()
  while step < end:
    batch = partitioning.shard_batch(next(batches), run.mesh)
    run.state, metrics = run.train_step(run.state, run.frozen, batch, rng)
    step, position = step + 1, position + 1
    loss = float(metrics["loss"])
    if not (math.isfinite(loss) and math.isfinite(float(metrics["param_norm"]))):
      run.checkpoints.wait()
      good = run.checkpoints.latest_step()
      what = f"loss is {loss}" if not math.isfinite(loss) else "the updated parameters are not finite"
      raise TrainingError(
        f"{what} at step {step}; stopped without saving this state. The last good checkpoint "
        f"(step {good}) is in {cfg.model_dir}. Lower the learning rate, check the data, or resume from it."
      )
    elapsed, tic = time.perf_counter() - tic, time.perf_counter()
    reporter.step(step, loss, float(metrics["num_tokens"]) / max(elapsed, 1e-9))
    if step % schedule["log_every"] == 0 or step == end:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      reporter.scalars(step, last, prefix="train/")
    if step % schedule["checkpoint_every"] == 0 or step == end:
      _save(run, cfg, step, position)
    if schedule["eval_every"] and (step % schedule["eval_every"] == 0 or step == end):
      last.update(_evaluate(run, cfg, schedule, reporter, step))
  run.checkpoints.wait()
  return last


def _evaluate(run: Run, cfg: RunConfig, schedule: dict[str, Any], reporter, step: int) -> dict[str, float]:
  from prompt_tuning import eval as evaluation

  metrics = evaluation.teacher_forced(
    run,
    cfg.mixture_or_task_name,
    cfg.task_feature_lengths,
    cfg.batch_size,
    schedule["eval_split"],
    schedule["eval_max_batches"],
  )
  reporter.scalars(step, metrics, prefix="eval/")
  return {f"eval/{k}": v for k, v in metrics.items()}


if __name__ == "__main__":  # python -m prompt_tuning.train --gin_file=... (same as `prompt-tuning train`)
  import sys

  from prompt_tuning import cli

  raise SystemExit(cli.main(["train", *sys.argv[1:]]))
