"""Packing (PACK): a packed batch gives every example exactly the loss and the trainable gradients it gets unpacked.

The packed batches come from the real pipeline (`inputs.feature_converter(pack=True)`: seqio's packing, each example
followed by room for its prompt); the unpacked ones from seqio's unpacked converter on the same examples. Each method
(prompt tuning in every combination mode, prefix tuning, per-layer prompts, IA3, model tuning) is compared on a tiny
random T5 built here, and so are mixed per-row prompts of different lengths. The steps are compiled at XLA's backend
optimization level 0: the same programs, compiled two to three times faster (compilation is most of these tests' time).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

import prompt_tuning as pt
from prompt_tuning import combine, inputs, optim, trainer
from prompt_tuning.methods import IA3, PerLayerPrompt, PrefixSettings, Prompt
from prompt_tuning.prompts import random_uniform
from prompt_tuning.tuning import TunedT5

LENGTHS = {"inputs": 20, "targets": 6}
PROMPT_LENGTH = 3
VOCAB = 64
FEATURES = inputs.MODEL_FEATURES_ENC_DEC
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


_uniform = random_uniform(0.5)  # Lester et al.'s uniform in [-0.5, 0.5], the project's own initializer


@pytest.fixture(scope="module")
def model():
  """(config, params) of a tiny random T5 1.1-style model (gated GELU, untied logits), no dropout; two encoder layers
  (per-layer prompts reach a second one) and one decoder layer (faster to compile)."""
  config = pt.get_config(
    "t5_1_0_tiny",
    vocab_size=VOCAB,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    num_decoder_layers=1,
  )
  return config, jax.jit(pt.init_params, static_argnums=0)(config, jax.random.key(0))


def _examples(count: int = 14, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Examples of every length up to the feature lengths (inputs end with EOS, as T5 tasks' do; some do not)."""
  rng = np.random.default_rng(seed)
  examples = []
  for k in range(count):
    # Classification-like: short targets; one example of the full input length fills a row alone.
    n_in = [1, 2, 4, 3, 5, 2, 4, 6, 2, 20, 3, 3, 1, 2][k % 14]
    n_out = [1, 1, 2, 1, 2, 1, 1, 2, 1, 6, 1, 2, 1, 1][k % 14]
    enc = rng.integers(2, VOCAB, n_in)
    if k % 4:
      enc[-1] = combine.EOS_ID
    examples.append({"inputs": enc.astype(np.int32), "targets": rng.integers(2, VOCAB, n_out).astype(np.int32)})
  return examples


def _dataset(examples):
  spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def _stack(rows, names):
  return {name: np.stack([row[name] for row in rows]) for name in names}


@functools.cache
def _batches(prompt_slots: int):
  """(the examples, their unpacked batch [N, ...], their packed batch [R, ...] with R <= N / 2, and every example's
  (row, segment))."""
  examples = _examples()
  unpacked = _stack(list(inputs.feature_converter(False)(_dataset(examples), LENGTHS).as_numpy_iterator()), FEATURES)
  converter = inputs.feature_converter(False, pack=True, prompt_slots=prompt_slots)
  packed_rows = list(converter(_dataset(examples), LENGTHS).as_numpy_iterator())
  packed = _stack(packed_rows, FEATURES + inputs.PACKED_FEATURES)
  assert packed["encoder_input_tokens"].shape[1] == LENGTHS["inputs"] + prompt_slots
  # seqio packs in order: example k is the k-th (row, segment). Each segment holds its example's tokens, then its
  # prompt slots; each row holds several examples.
  where = [
    (row, segment) for row, r in enumerate(packed_rows) for segment in range(1, r["encoder_segment_ids"].max() + 1)
  ]
  assert len(where) == len(examples) and len(packed_rows) <= len(examples) / 2
  for (row, segment), example in zip(where, examples):
    tokens = packed["encoder_input_tokens"][row][packed["encoder_segment_ids"][row] == segment]
    expected = np.concatenate([example["inputs"], np.full(prompt_slots, combine.PROMPT_SLOT)])
    np.testing.assert_array_equal(tokens, expected)
    targets = packed["decoder_target_tokens"][row][packed["decoder_segment_ids"][row] == segment]
    np.testing.assert_array_equal(targets, example["targets"])
  return examples, unpacked, packed, where


def _token_losses(logits, batch):
  """Cross-entropy + z-loss of every target token, weighted: float32 [B, T]."""
  cross_entropy, z_term = trainer.token_losses(logits, batch["decoder_target_tokens"], 1e-4)
  return (cross_entropy + z_term) * trainer.loss_weights(batch)


def _example_losses(per_token, batch, where=None):
  """Each example's summed token losses: per row, or per (row, segment) of a packed batch."""
  per_token = np.asarray(per_token)
  if where is None:
    return per_token.sum(axis=1)
  segments = batch["decoder_segment_ids"]
  return np.array([per_token[row][segments[row] == segment].sum() for row, segment in where])


@jax.jit
def _perturbed(tree, key):
  """The tree moved off its initialization (IA3's ones would hide a wrong rescaling), every leaf differently."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@functools.cache
def _step(tuned):
  """A jitted train step under SGD with learning rate 1 (the update is minus the step's normalized gradient), and
  the token losses of the batch before it."""

  def step(state, frozen, batch, rng):
    logits = tuned.forward(optim.merge(state.trainable, frozen), batch, False, rng)
    new_state, metrics = trainer.train_step(state, frozen, batch, rng, forward=tuned.forward, optimizer=optax.sgd(1.0))
    return new_state, metrics, _token_losses(logits, batch)

  return _jit(step)


@functools.cache
def _eval_step(tuned):
  """The jitted evaluation step (op by op, its hundreds of operations would each be compiled on their own)."""
  return _jit(functools.partial(trainer.eval_step, forward=tuned.forward))


def _compare(tuned, params, pattern):
  examples, unpacked, packed, where = _batches(tuned.prompt_length)
  trainable, frozen = optim.partition(params, pattern)
  results = {}
  for name, batch, placement in (("unpacked", unpacked, None), ("packed", packed, where)):
    state = trainer.TrainState.create(trainable, optax.sgd(1.0))
    state, metrics, per_token = _step(tuned)(state, frozen, batch, jax.random.key(1))
    gradient = jax.tree.map(lambda new, old: old - new, *jax.device_get((state.trainable, trainable)))
    results[name] = (_example_losses(per_token, batch, placement), gradient, metrics)
  (losses, gradient, metrics), (packed_losses, packed_gradient, packed_metrics) = results["unpacked"], results["packed"]
  np.testing.assert_allclose(packed_losses, losses, rtol=2e-5, atol=1e-5)
  assert float(np.abs(losses).min()) > 0.1  # every example has a real loss
  # T5X's normalization (the real target tokens of the whole batch): the same loss and the same step.
  assert float(packed_metrics["num_tokens"]) == float(metrics["num_tokens"]) == sum(len(e["targets"]) for e in examples)
  np.testing.assert_allclose(float(packed_metrics["loss"]), float(metrics["loss"]), rtol=2e-6)
  np.testing.assert_allclose(float(packed_metrics["accuracy"]), float(metrics["accuracy"]), rtol=1e-6)
  # The evaluation's sequence accuracy counts each packed segment as its own sequence.
  scored = [_eval_step(tuned)(trainable, frozen, batch) for batch in (unpacked, packed)]
  assert [float(m["num_sequences"]) for m in scored] == [len(examples)] * 2
  assert float(scored[0]["sequence_accuracy"]) == float(scored[1]["sequence_accuracy"])
  flat, packed_flat = optim._flat(gradient), optim._flat(packed_gradient)
  assert flat.keys() == packed_flat.keys() and flat
  for path, value in flat.items():
    assert float(np.abs(value).max()) > 0, path
    np.testing.assert_allclose(packed_flat[path], value, rtol=1e-4, atol=2e-7, err_msg=path)


def _tuned_params(model, methods, mode="prefix"):
  config, backbone = model
  tuned = TunedT5(config, methods, mode)
  vectors = _perturbed(jax.jit(tuned.init_vectors)(jax.random.key(1), backbone), jax.random.key(2))
  return tuned, {"t5": backbone, **vectors}


@pytest.mark.parametrize("mode", combine.MODES)
def test_prompt_tuning_packed_equals_unpacked_in_every_mode(model, mode):
  tuned, params = _tuned_params(model, (Prompt(PROMPT_LENGTH, _uniform),), mode)
  _compare(tuned, params, r"^prompt$")


@pytest.mark.parametrize(
  "methods",
  [
    (PrefixSettings(length=2, mlp_width=8),),
    (PerLayerPrompt(PROMPT_LENGTH, _uniform, mode="replace"),),
    (PerLayerPrompt(PROMPT_LENGTH, _uniform, mode="add"),),
    (IA3(),),
    (Prompt(PROMPT_LENGTH, _uniform), PrefixSettings(length=2, mlp_width=8), IA3()),
  ],
  ids=["prefix", "per_layer_replace", "per_layer_add", "ia3", "prompt_prefix_ia3"],
)
def test_every_method_packed_equals_unpacked(model, methods):
  tuned, params = _tuned_params(model, methods, "suffix")
  pattern = r"^(" + "|".join(m.name for m in methods) + r")(/|$)"
  _compare(tuned, params, pattern)


def test_model_tuning_packed_equals_unpacked(model):
  """No prompt (no slots): every backbone weight's gradient, packed and unpacked."""
  tuned, params = _tuned_params(model, ())
  _compare(tuned, params, r"^t5/")


def test_mixed_per_row_prompts_of_different_lengths(model, mode="suffix"):
  """[B, P, D] prompts and per-row prompt lengths: a packed row's segments share the row's prompt and length, and
  each example gets the loss (and its row's prompt the gradient) it gets unpacked with that prompt."""
  config, params = model
  _, unpacked, packed, where = _batches(PROMPT_LENGTH)
  rows = packed["encoder_input_tokens"].shape[0]
  table = jax.random.uniform(jax.random.key(4), (rows, PROMPT_LENGTH, config.emb_dim), minval=-0.5, maxval=0.5)
  lengths = jnp.arange(rows) % (PROMPT_LENGTH + 1)  # 0 (no prompt) .. P, every length present
  assert set(np.asarray(lengths).tolist()) == set(range(PROMPT_LENGTH + 1))
  row_of = jnp.array([row for row, _ in where])  # the packed row of every example
  packed_features = {k: packed[k] for k in ("encoder_segment_ids", "decoder_segment_ids")}

  def total(prompts, batch, prompt_lengths, **segments):
    logits = pt.T5(config).apply(
      {"params": params},
      batch["encoder_input_tokens"],
      batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
      prompt=prompts,
      prompt_lengths=prompt_lengths,
      prompt_combination=mode,
      **segments,
    )
    per_token = _token_losses(logits, batch)
    return jnp.sum(per_token), per_token

  (packed_total, packed_tokens), packed_grad = _jit(jax.value_and_grad(total, has_aux=True))(
    table, packed, lengths, **packed_features
  )
  (unpacked_total, tokens), grad = _jit(
    jax.value_and_grad(lambda t: total(t[row_of], unpacked, lengths[row_of]), has_aux=True)
  )(table)
  np.testing.assert_allclose(
    _example_losses(packed_tokens, packed, where), _example_losses(tokens, unpacked), rtol=2e-5, atol=1e-5
  )
  np.testing.assert_allclose(float(packed_total), float(unpacked_total), rtol=2e-6)
  # Rows without a prompt get no gradient; the others the same one, packed or not.
  assert float(jnp.abs(grad[lengths == 0]).max()) == 0 and float(jnp.abs(grad).max()) > 0
  np.testing.assert_allclose(packed_grad, grad, rtol=1e-4, atol=2e-7)


@pytest.mark.parametrize("mode", combine.MODES)
def test_join_packed_lays_out_each_segment_as_join_lays_out_its_example_alone(mode):
  """Token values stand for embeddings: each segment's real positions hold what `join` puts in a row of that example
  alone, and the map back to packed positions is a permutation."""
  prompt = np.array([[-1.0], [-2.0]])  # P = 2, D = 1
  examples = [[5, 6, 7, 1], [8, 1], [4, 9]]
  for used in (2, 1, 0):
    tokens = [t for e in examples for t in e + [combine.PROMPT_SLOT] * 2] + [0, 0]
    segments = [k + 1 for k, e in enumerate(examples) for _ in range(len(e) + 2)] + [0, 0]
    tokens, segments = jnp.array([tokens]), jnp.array([segments])
    embedded = jnp.asarray(jnp.maximum(tokens, 0), jnp.float32)[..., None]
    joined = combine.join_packed(prompt, embedded, tokens, segments, mode=mode, prompt_lengths=jnp.array([used]))
    alone = []
    for e in examples:
      row = jnp.array([e])
      one = combine.join(
        prompt,
        jnp.asarray(row, jnp.float32)[..., None],
        row > 0,
        mode=mode,
        tokens=row,
        prompt_lengths=jnp.array([used]),
      )
      alone.append((np.asarray(one.embedded[0, :, 0]), np.asarray(one.mask[0])))
    values = np.concatenate([v for v, _ in alone] + [np.zeros(2)])
    mask = np.concatenate([m for _, m in alone] + [np.zeros(2, bool)])
    np.testing.assert_array_equal(joined.mask[0], mask)
    np.testing.assert_array_equal(np.asarray(joined.embedded[0, :, 0])[mask], values[mask])
    np.testing.assert_array_equal(np.sort(joined.token_positions[0]), np.arange(tokens.shape[1]))
    is_token, source = np.asarray(joined.is_token[0]), np.asarray(joined.token_source[0])
    for position, target in enumerate(np.asarray(joined.token_positions[0])):
      assert not is_token[target] or source[target] == position


def test_decoder_only_packing_is_refused_with_the_setting_to_change():
  config = pt.get_config("decoder_only_tiny")
  params = pt.init_params(config, jax.random.key(0))
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="decoder-only.*PACK = False"):
    pt.T5(config).apply({"params": params}, None, tokens, tokens, decoder_segment_ids=tokens)
  with pytest.raises(ValueError, match="set PACK = False"):
    inputs.feature_converter(True, pack=True)
  from prompt_tuning import validation

  with pytest.raises(validation.SettingError, match="set PACK = False"):
    validation.check_packing(True, takes_packed_rows=False)


def test_segment_ids_go_together_and_only_in_teacher_forcing(model):
  config, params = model
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="both encoder_segment_ids and decoder_segment_ids"):
    pt.T5(config).apply({"params": params}, tokens, tokens, tokens, encoder_segment_ids=tokens)


def test_packed_training_and_evaluation_from_the_command_line(reference_dir, vocabulary, tmp_path, _cli):
  """`prompt-tuning train --gin.PACK=True` trains on rows of several examples and evaluates during training; `eval`
  gives the same teacher-forced loss packed and unpacked; what packing cannot do is refused in one line."""
  import json

  from local_task_files import cli_flags

  model_dir = tmp_path / "run"
  flags = [
    *cli_flags(reference_dir, tmp_path / "data", "packing_yes_no"),
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 8}",
  ]
  _cli("train", *flags, "--gin.PACK=True", "--gin.EVAL_EVERY=2")
  lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
  train = [m for m in lines if "train/loss" in m]
  assert [m["step"] for m in train] == [1, 2, 3, 4] and all(np.isfinite(m["train/loss"]) for m in train)
  # Unpacked, 8 rows hold 8 examples, each with at most this many target tokens; packed rows hold more.
  most = max(len(vocabulary.encode(answer)) + 1 for answer in ("yes", "no"))
  assert all(m["train/num_tokens"] > 8 * most for m in train)
  assert [m["step"] for m in lines if "eval/loss" in m] == [2, 4]

  losses = []
  for pack in (True, False):
    out = _cli("eval", "--gin_file=runs/prompt_eval.gin", *flags, f"--gin.PACK={pack}")
    assert "packing_yes_no/accuracy" in out.stdout
    losses.append(json.loads((model_dir / "eval_metrics.jsonl").read_text().splitlines()[-1])["loss"])
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)

  # The saved data position counts packed batches: resuming unpacked is refused, naming PACK.
  resumed = _cli("train", *flags, "--gin.TRAIN_STEPS=6", check=False)
  assert resumed.returncode == 1 and "PACK = True" in resumed.stderr and "Traceback" not in resumed.stderr
  # A decoder-only backbone (here a random one) is not packed.
  decoder_only = _cli(
    "train",
    *flags,
    f"--gin.MODEL_DIR='{tmp_path / 'lm'}'",
    "--gin.INITIAL_CHECKPOINT_PATH=None",
    "--gin.MODEL_SIZE='decoder_only_tiny'",
    "--gin.PACK=True",
    check=False,
  )
  assert decoder_only.returncode == 1
  assert decoder_only.stderr.strip().splitlines()[-1].endswith("set PACK = False.")
  assert len(decoder_only.stderr.strip().splitlines()) == 1, decoder_only.stderr
