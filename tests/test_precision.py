"""Precision and memory settings: ACTIVATION_DTYPE, FROZEN_DTYPE and REMAT_POLICY, from gin to the model.

bfloat16 activations (and frozen weights) against float32 on a small model built here, with the errors measured;
the float32 islands (attention logits and softmax, layer norms, position bias, logits); remat policies against none;
the settings refused before the backbone loads; the backbone fingerprint across precisions; and a bfloat16 run
through the command line that resumes with another FROZEN_DTYPE.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import run_cli
from local_task_files import cli_flags

import prompt_tuning as pt
from prompt_tuning import optim, trainer, validation
from prompt_tuning.checkpoints import training as training_checkpoints
from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.methods import Prompt
from prompt_tuning.run import RunConfig, load_backbone, with_run_settings
from prompt_tuning.tuning import TunedT5

# T5 1.1's architecture at a width where bfloat16's rounding shows as it would at scale (every matmul sums 64+
# products), small enough to run in a second.
SMALL = pt.T5Config(
  vocab_size=256,
  emb_dim=64,
  num_heads=4,
  head_dim=16,
  mlp_dim=128,
  num_encoder_layers=2,
  num_decoder_layers=2,
  mlp_activations=("gelu", "linear"),
  logits_via_embedding=False,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=16,
  dropout_rate=0.0,
)


@pytest.fixture(scope="module")
def small():
  """(frozen backbone float32, prompt [5, 64], batch of 4 rows with padding)."""
  params = pt.init_params(SMALL, jax.random.key(0))
  prompt = jax.random.uniform(jax.random.key(1), (5, SMALL.emb_dim), minval=-0.5, maxval=0.5)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, SMALL.vocab_size, (4, 12)).astype(np.int32)
  enc[1, 8:] = 0
  targets = rng.integers(2, SMALL.vocab_size, (4, 6)).astype(np.int32)
  targets[2, 4:] = 0
  batch = {
    "encoder_input_tokens": enc,
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }
  return params, prompt, batch


def _tuned(config):
  return TunedT5(config, (Prompt(5, lambda rng, emb, n: jnp.zeros((n, emb.shape[1]))),))


def _loss_and_prompt_gradient(config, params, prompt, batch):
  """The train step's loss and its gradient for the prompt (trainer.summed_loss, normalized as train_step does)."""
  tuned = _tuned(config)
  loss = functools.partial(trainer.summed_loss, forward=tuned.forward, z_loss=1e-4, enable_dropout=False)
  (total, _), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
    {"prompt": prompt}, {"t5": params}, batch, jax.random.key(0)
  )
  tokens = np.sum(batch["decoder_loss_weights"])
  return float(total / tokens), np.asarray(grads["prompt"] / tokens)


def _logits(config, params, prompt, batch):
  return np.asarray(
    jax.jit(pt.T5(config).apply)(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"], prompt=prompt
    )
  )


def _relative(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
  "frozen_dtype, logits_tolerance, gradient_tolerance",
  [
    # Relative L2 errors measured (jax 0.10.2, CPU): logits 8.7e-3, the prompt's gradient 2.4e-2 (bfloat16 keeps 8
    # bits of mantissa: 3.9e-3 per rounding, accumulated over 2 + 2 layers and the backward pass).
    (None, 0.02, 0.05),
    # Measured: logits 9.0e-3, prompt gradient 2.7e-2: the weights' own rounding adds a little to the activations'.
    ("bfloat16", 0.02, 0.05),
  ],
)
def test_bfloat16_matches_float32(small, frozen_dtype, logits_tolerance, gradient_tolerance):
  params, prompt, batch = small
  bf16 = SMALL.replace(dtype="bfloat16", param_dtype=frozen_dtype or "float32")
  frozen = jax.tree.map(lambda x: x.astype(bf16.parameter_dtype), params)
  reference = _logits(SMALL, params, prompt, batch)
  logits = _logits(bf16, frozen, prompt, batch)
  assert logits.dtype == np.float32
  logits_error = _relative(logits, reference)
  loss_32, grad_32 = _loss_and_prompt_gradient(SMALL, params, prompt, batch)
  loss_16, grad_16 = _loss_and_prompt_gradient(bf16, frozen, prompt, batch)
  assert grad_16.dtype == np.float32  # the trainable prompt's gradient, and so its update, stay float32
  gradient_error = _relative(grad_16, grad_32)
  print(f"frozen {frozen_dtype}: logits {logits_error:.2e}, prompt gradient {gradient_error:.2e}")
  assert logits_error < logits_tolerance and gradient_error < gradient_tolerance
  assert abs(loss_16 - loss_32) < 0.01 * abs(loss_32)
  assert logits_error > 0 and gradient_error > 0  # bfloat16 really ran


def _primitives(jaxpr, found):
  for eqn in jaxpr.eqns:
    found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _primitives(sub.jaxpr, found)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _primitives(sub, found)
  return found


def test_softmax_layer_norms_and_logits_stay_float32(small):
  params, prompt, batch = small
  config = SMALL.replace(dtype="bfloat16", param_dtype="bfloat16")
  frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  apply = lambda p, x: pt.T5(config).apply({"params": p}, *x, prompt=prompt)
  jaxpr = jax.make_jaxpr(apply)(frozen, (batch["encoder_input_tokens"], batch["decoder_input_tokens"]))
  eqns = _primitives(jaxpr.jaxpr, [])
  by_name = {}
  for eqn in eqns:
    by_name.setdefault(eqn.primitive.name, []).append(eqn)
  # Softmax (exp and its max and sum) and the RMS norms' rsqrt: float32 inputs, every one of them.
  assert by_name["exp"] and all(e.invars[0].aval.dtype == jnp.float32 for e in by_name["exp"])
  assert by_name["rsqrt"] and all(e.invars[0].aval.dtype == jnp.float32 for e in by_name["rsqrt"])
  dots = by_name["dot_general"]
  float32_out = [e for e in dots if e.outvars[0].aval.dtype == jnp.float32]
  bf16_out = [e for e in dots if e.outvars[0].aval.dtype == jnp.bfloat16]
  # float32: the attention logits (6 attentions), the logits, the position-bias contractions (2 stacks).
  assert len(float32_out) == 6 + 1 + 2, [str(e.outvars[0].aval) for e in float32_out]
  assert all(e.invars[0].aval.dtype == jnp.bfloat16 for e in float32_out if e.invars[0].aval.ndim == 4)
  assert bf16_out  # the projections and the MLPs run in bfloat16
  assert jaxpr.out_avals[0].dtype == jnp.float32


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policies_give_the_loss_and_gradients_of_none(small, policy):
  params, prompt, batch = small
  loss, grad = _loss_and_prompt_gradient(SMALL, params, prompt, batch)
  remat_loss, remat_grad = _loss_and_prompt_gradient(SMALL.replace(remat=policy), params, prompt, batch)
  assert remat_loss == pytest.approx(loss, rel=1e-6)
  np.testing.assert_allclose(remat_grad, grad, rtol=1e-5, atol=1e-7)
  # Model tuning's weight gradients too.
  weights = lambda config: jax.grad(
    lambda p: trainer.summed_loss({"t5": p}, {}, batch, jax.random.key(0), _tuned(config).forward, 1e-4, False)[0]
  )
  reference, remat = (jax.jit(weights(c))(params) for c in (SMALL, SMALL.replace(remat=policy)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat, reference)


def test_remat_full_compiles_to_less_temporary_memory():
  # Abstract inputs: nothing is allocated. T5 1.1 small's width, 4 + 4 layers, batch 8, 256 + 16 positions.
  config = pt.get_config("t5_1_1_small", vocab_size=512, num_encoder_layers=4, num_decoder_layers=4)
  temporaries = {}
  for policy in ("none", "full"):
    tuned = _tuned(config.replace(remat=policy))
    backbone = pt.param_shapes(tuned.config)
    state = jax.eval_shape(
      functools.partial(trainer.TrainState.create, optimizer=optim.adafactor()),
      {"prompt": jax.ShapeDtypeStruct((5, config.emb_dim), jnp.float32)},
    )
    batch = {k: jax.ShapeDtypeStruct((8, n), jnp.int32) for k, n in (("encoder_input_tokens", 256),)}
    batch |= {k: jax.ShapeDtypeStruct((8, 16), jnp.int32) for k in ("decoder_input_tokens", "decoder_target_tokens")}
    step = jax.jit(functools.partial(trainer.train_step, forward=tuned.forward, optimizer=optim.adafactor()))
    compiled = step.lower(state, {"t5": backbone}, batch, jax.random.key(0)).compile()
    temporaries[policy] = compiled.memory_analysis().temp_size_in_bytes
  # Measured: none 159.8 MiB, full 133.3 MiB. XLA:CPU merges much of a rematerialized layer's recomputation back
  # into its forward pass (its pipeline expands optimization barriers), so the saving here is smaller than an
  # accelerator's, where only each layer's input stays (prompt_tuning/plan.py estimates that one).
  assert temporaries["full"] < 0.95 * temporaries["none"], temporaries


def _run_config(**changes):
  settings = dict(
    model_dir="/tmp/unused",
    initial_checkpoint_path="/nonexistent/checkpoint",
    mixture_or_task_name="unused",
    task_feature_lengths={"inputs": 8, "targets": 4},
    model_size="t5_1_1_tiny",
    prompt=Prompt(2, lambda rng, emb, n: jnp.zeros((n, emb.shape[1]))),
  )
  return RunConfig(**{**settings, **changes})


@pytest.mark.parametrize(
  "changes, message",
  [
    (
      dict(activation_dtype="bf16"),
      "ACTIVATION_DTYPE must be one of 'float32', 'bfloat16', got 'bf16': set ACTIVATION_DTYPE = 'bfloat16'.",
    ),
    (dict(activation_dtype="float16"), "T5 overflows float16"),
    (dict(frozen_dtype="int8"), "FROZEN_DTYPE must be one of None, 'float32', 'bfloat16', got 'int8'"),
    (dict(remat_policy=True), "REMAT_POLICY must be one of 'none', 'full', 'dots_saveable', got True (t5x's"),
    (dict(remat_policy="minimal"), "REMAT_POLICY must be one of"),
  ],
)
def test_bad_precision_settings_are_one_line_errors(changes, message):
  from prompt_tuning import cli

  with pytest.raises(validation.SettingError) as raised:
    _run_config(**changes)
  shown = cli.error_message(raised.value)  # what the command line prints
  assert message in shown and "\n" not in shown


def test_frozen_dtype_with_model_tuning_is_refused_before_anything_is_read():
  cfg = _run_config(frozen_dtype="bfloat16", trainable_pattern=".*", prompt=None)
  # The checkpoint path does not exist: the refusal comes first (MODEL_SIZE says which weights would train).
  with pytest.raises(validation.SettingError, match=r"FROZEN_DTYPE='bfloat16' casts the frozen backbone, but "):
    load_backbone(cfg)
  # A pattern that trains only the prompt reaches the checkpoint (and fails there: it does not exist).
  with pytest.raises(CheckpointError, match="does not exist"):
    load_backbone(_run_config(frozen_dtype="bfloat16"))


def test_the_macros_reach_the_backbone_config():
  import gin

  from prompt_tuning import gin_config

  gin.clear_config()
  try:
    gin_config.configure_gin(
      ["test/prompt_tiny.gin"],
      [
        "MODEL_DIR = '/tmp/x'",
        "INITIAL_CHECKPOINT_PATH = '/tmp/y'",
        "MIXTURE_OR_TASK_NAME = 'z'",
        "ACTIVATION_DTYPE = 'bfloat16'",
        "FROZEN_DTYPE = 'bfloat16'",
        "REMAT_POLICY = 'dots_saveable'",
      ],
      [],
      check_unread=True,  # each of them is read
    )
    cfg = RunConfig()
  finally:
    gin.clear_config()
  config = with_run_settings(cfg, pt.get_config(cfg.model_size))
  assert (config.dtype, config.param_dtype, config.remat) == ("bfloat16", "bfloat16", "dots_saveable")


def test_the_fingerprint_is_the_backbones_whatever_its_precision(small):
  params, _, _ = small
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  assert training_checkpoints.backbone_fingerprint(bf16) == training_checkpoints.backbone_fingerprint(params)
  other = jax.tree.map(lambda x: x, params)
  other["decoder"]["decoder_norm"]["scale"] = other["decoder"]["decoder_norm"]["scale"] * 1.05
  assert training_checkpoints.backbone_fingerprint(other) != training_checkpoints.backbone_fingerprint(params)
  current = {
    "backbone_fingerprint": training_checkpoints.backbone_fingerprint(params),
    "backbone_fingerprint_version": training_checkpoints.FINGERPRINT_VERSION,
    "frozen_dtype": "float32",
  }
  training_checkpoints.check_fingerprint(current, bf16, "/ckpt")  # another FROZEN_DTYPE: allowed
  with pytest.raises(CheckpointError, match="another frozen backbone"):
    training_checkpoints.check_fingerprint(current, other, "/ckpt")
  # A checkpoint from before version 2 recorded the float32 fingerprint with dtypes: still accepted as it was...
  legacy = {"backbone_fingerprint": training_checkpoints.legacy_backbone_fingerprint(params)}
  training_checkpoints.check_fingerprint(legacy, params, "/ckpt")
  # ... and a bfloat16 cast cannot match it: the error says to resume once with FROZEN_DTYPE = None.
  with pytest.raises(CheckpointError, match="resume once with FROZEN_DTYPE = None"):
    training_checkpoints.check_fingerprint(legacy, bf16, "/ckpt")
  # ... and a float32 mismatch may be the old moments' reduction order: the error says where to resume.
  with pytest.raises(CheckpointError, match="resume once on the cores and devices it was trained on"):
    training_checkpoints.check_fingerprint(legacy, other, "/ckpt")


# Computes the fingerprint of a checkpoint pinned to one core (XLA's threads too: pinned before it starts), then the
# same arrays sharded over 8 simulated devices; prints both.
FINGERPRINT_ELSEWHERE = """
import os, sys
path = sys.argv[1]
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
import jax
from jax.sharding import NamedSharding, PartitionSpec
from prompt_tuning.checkpoints import load_pretrained
from prompt_tuning.checkpoints.training import backbone_fingerprint
_, params = load_pretrained(path, config="t5_1_1_tiny")
print("one_core", backbone_fingerprint(params))
mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
def place(x):
  axes = [i for i, size in enumerate(x.shape) if size % 8 == 0][:1]
  spec = ["x" if i in axes else None for i in range(x.ndim)]
  return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))
sharded = jax.tree.map(place, params)
assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(sharded))
print("eight_devices", backbone_fingerprint(sharded))
"""


def test_the_fingerprint_does_not_depend_on_cores_or_devices(reference_dir):
  """A sweep resumed with --parallel pins each run to one core; float moments summed in another order had another
  last digit, and the run was refused against its own backbone. The fingerprint must be one number wherever it is
  computed: all cores, one core, or sharded over 8 devices (the last two in one process pinned to one core)."""
  import subprocess
  import sys

  from prompt_tuning.checkpoints import load_pretrained

  path = str(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3")
  _, params = load_pretrained(path, config="t5_1_1_tiny")
  here = training_checkpoints.backbone_fingerprint(params)
  done = subprocess.run(
    [sys.executable, "-c", FINGERPRINT_ELSEWHERE, path], capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  elsewhere = dict(
    line.split() for line in done.stdout.splitlines() if line.startswith(("one_core ", "eight_devices "))
  )
  assert elsewhere == {"one_core": here, "eight_devices": here}
  # Moved values count too: a kernel with two rows swapped is another backbone.
  swapped = jax.tree.map(lambda x: x, params)
  kernel = np.asarray(swapped["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]).copy()
  kernel[[0, 1]] = kernel[[1, 0]]
  swapped["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] = kernel
  assert training_checkpoints.backbone_fingerprint(swapped) != here


@pytest.fixture(scope="module")
def local_task(reference_dir, tmp_path_factory):
  return cli_flags(reference_dir, tmp_path_factory.mktemp("data"), "precision_yes_no")


def _losses(model_dir):
  lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
  return [m["train/loss"] for m in lines if "train/loss" in m]


def test_a_bfloat16_run_from_one_flag_resumes_with_bfloat16_frozen_weights(local_task, tmp_path, capfd):
  runs = {}
  for name, flags in (("float32", []), ("bfloat16", ["--gin.ACTIVATION_DTYPE='bfloat16'"])):
    runs[name] = tmp_path / name
    out = run_cli(capfd, "train", *local_task, f"--gin.MODEL_DIR='{runs[name]}'", "--gin.TRAIN_STEPS=2", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"precision: activations {name}, frozen backbone float32, trainable float32; remat none" in out.stderr
  float32, bfloat16 = _losses(runs["float32"]), _losses(runs["bfloat16"])
  assert bfloat16 != float32 and np.allclose(bfloat16, float32, rtol=0.02)  # bfloat16 ran, close to float32
  prompt = np.load(runs["bfloat16"] / "numpy_checkpoints" / "checkpoint_2" / "prompt.npy")
  assert prompt.dtype == np.float32
  # Resuming with the frozen backbone cast to bfloat16: the same backbone, allowed, and said.
  resumed = run_cli(
    capfd,
    "train",
    *local_task,
    f"--gin.MODEL_DIR='{runs['bfloat16']}'",
    "--gin.TRAIN_STEPS=4",
    "--gin.ACTIVATION_DTYPE='bfloat16'",
    "--gin.FROZEN_DTYPE='bfloat16'",
    "--gin.REMAT_POLICY='full'",
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "frozen backbone bfloat16, trainable float32; remat full" in resumed.stderr
  assert "now in bfloat16 (FROZEN_DTYPE)" in resumed.stderr
  assert len(_losses(runs["bfloat16"])) == 4
  # Model tuning cannot take a bfloat16 backbone: one line, before anything loads.
  refused = run_cli(
    capfd,
    "train",
    *local_task,
    f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
    "--gin.FROZEN_DTYPE='bfloat16'",
    "--gin.TRAINABLE_PATTERN='.*'",
  )
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert "need float32 master weights: set FROZEN_DTYPE = None" in refused.stderr


# `prompt-tuning serve` of the demo model with the smallest shapes: one admit and one step program, compiled on use.
SERVE_FLAGS = [
  "--gin_file=demo/base.gin",
  "--no_warm_up",
  "--gin.EngineShapes.slots=1",
  "--gin.EngineShapes.input_buckets=(32,)",
  "--gin.EngineShapes.admit_buckets=(1,)",
  "--gin.EngineShapes.max_decode_length=4",
  "--gin.EngineShapes.max_prompt_length=1",
  "--gin.EngineShapes.max_prefix_length=0",
  "--gin.EngineShapes.methods=('prompt',)",
]


def test_a_server_honours_the_runs_precision_settings():
  """serve builds through run.py: FROZEN_DTYPE and ACTIVATION_DTYPE bfloat16 give a bfloat16 backbone served with
  bfloat16 activations, and it answers."""
  import gin
  from fastapi.testclient import TestClient

  from prompt_tuning.serve import cli as serve_cli
  from prompt_tuning.serve.app import create_app

  gin.clear_config()
  try:
    flags = [*SERVE_FLAGS, "--gin.FROZEN_DTYPE='bfloat16'", "--gin.ACTIVATION_DTYPE='bfloat16'"]
    _, server = serve_cli.server_from_flags(flags)
  finally:
    gin.clear_config()
  engine = server.engine
  assert (engine.config.dtype, engine.config.param_dtype) == ("bfloat16", "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(engine.params)} == {jnp.dtype(jnp.bfloat16)}
  with TestClient(create_app(server)) as client:
    answer = client.post("/v1/generate", json={"text": "Is a cat an animal or a plant?", "max_decode_length": 4})
  assert answer.status_code == 200, answer.text
  assert 1 <= len(answer.json()["token_ids"]) <= 4 and isinstance(answer.json()["text"], str)


def test_serve_refuses_a_macro_read_by_nothing_naming_the_closest(capsys):
  """serve's gin is checked as train's: a typo'd macro is an error before anything loads."""
  import gin

  from prompt_tuning import cli

  try:
    code = cli.main(["serve", *SERVE_FLAGS, "--gin.ACTIVATION_DTYP='bfloat16'"])
  finally:
    gin.clear_config()
  assert code == 1
  error = capsys.readouterr().err
  assert "ACTIVATION_DTYP is set but read by nothing in this configuration; did you mean ACTIVATION_DTYPE?" in error
