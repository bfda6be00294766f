"""The trainer in one process: what changes in a step, accumulation, the optimizer, failure modes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("seqio")
import tiny_task  # noqa: E402

import prompt_tuning as pt  # noqa: E402
from prompt_tuning import optim, train, trainer  # noqa: E402
from prompt_tuning.checkpoints import CheckpointError, save_hf_pretrained  # noqa: E402
from prompt_tuning.methods import Prompt  # noqa: E402
from prompt_tuning.tuning import TunedT5  # noqa: E402


@pytest.fixture(scope="module")
def task(reference_dir):
  return tiny_task.register()


def _config(model_dir, **overrides):
  return tiny_task.run_config(model_dir, **overrides)


def test_only_the_prompt_changes_and_frozen_weights_equal_the_checkpoint(task, trained_run):
  assert "trainable parameters: 12 of 257,868" in trained_run.log
  cfg = trained_run.config(trained_run.model_dir)
  run = train.build(cfg)  # restores step 4
  run.checkpoints.close()
  assert int(run.state.step) == 4
  _, on_disk = pt.load_pretrained(tiny_task.T5X_TINY, config="t5_1_1_tiny")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.frozen["t5"]), on_disk)
  # ...and not a random initialization of the same shapes.
  random = pt.init_params(run.tuned.config, jax.random.key(0))
  assert not np.allclose(
    random["encoder"]["layers_0"]["attention"]["query"]["kernel"],
    on_disk["encoder"]["layers_0"]["attention"]["query"]["kernel"],
  )
  initial = run.tuned.init_vectors(jax.random.key(cfg.seed), run.frozen["t5"])["prompt"]
  assert set(run.state.trainable) == {"prompt"}
  assert not np.allclose(run.state.trainable["prompt"], initial)


def _tiny_setup(reference_dir, pattern=r"^prompt(/|$)"):
  config, backbone = pt.load_pretrained(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3", config="t5_1_1_tiny")
  tuned = TunedT5(config, (Prompt(3, tiny_task.uniform_init),))
  params = {"t5": backbone, **tuned.init_vectors(jax.random.key(0), backbone)}
  trainable, frozen = optim.partition(params, pattern)
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 32000, (4, 3)).astype(np.int32)
  batch = {
    "encoder_input_tokens": rng.integers(2, 32000, (4, 6)).astype(np.int32),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }
  return tuned, trainable, frozen, batch


# trainer.train_step compiled, as training runs it (op by op, the tiny model's step costs seconds of compiling each
# primitive); the settings that shape the program are static.
_train_step = jax.jit(trainer.train_step, static_argnames=("forward", "optimizer", "num_microbatches"))


def test_a_step_changes_exactly_the_trainable_subset(reference_dir):
  tuned, trainable, frozen, batch = _tiny_setup(reference_dir, r"^t5/decoder/layers_1/")
  optimizer = optax.sgd(0.1)
  state = trainer.TrainState.create(trainable, optimizer)
  new, _ = _train_step(state, frozen, batch, jax.random.key(0), forward=tuned.forward, optimizer=optimizer)
  before, after = optim._flat(trainable), optim._flat(new.trainable)
  assert all(k.startswith("t5/decoder/layers_1/") for k in after)
  assert all(not np.array_equal(before[k], after[k]) for k in after if "layer_norm" not in k)
  # The updated subset is what the model computes with: its logits move.
  forward = jax.jit(tuned.forward, static_argnums=2)
  old = forward(optim.merge(trainable, frozen), batch, False, jax.random.key(0))
  assert not np.allclose(forward(optim.merge(new.trainable, frozen), batch, False, jax.random.key(0)), old)


def test_a_step_against_the_prompt_gradient_lowers_the_loss(reference_dir):
  tuned, trainable, frozen, batch = _tiny_setup(reference_dir)

  def loss(prompt):
    return trainer.summed_loss({"prompt": prompt}, frozen, batch, jax.random.key(0), tuned.forward, 0.0, False)[0]

  loss = jax.jit(loss)  # op by op, the tiny model's forward and backward cost seconds of compiling each primitive
  prompt = trainable["prompt"]
  grad = jax.jit(jax.grad(loss))(prompt)
  step = 1e-2 * grad / jnp.linalg.norm(grad)
  assert float(loss(prompt - step)) < float(loss(prompt)) < float(loss(prompt + step))


def test_gradient_accumulation_equals_one_big_batch(reference_dir):
  tuned, trainable, frozen, batch = _tiny_setup(reference_dir)
  optimizer = optax.sgd(1.0)
  state = trainer.TrainState.create(trainable, optimizer)
  kw = dict(forward=tuned.forward, optimizer=optimizer)
  whole, m1 = _train_step(state, frozen, batch, jax.random.key(0), **kw)
  split, m2 = _train_step(state, frozen, batch, jax.random.key(0), num_microbatches=2, **kw)
  np.testing.assert_allclose(whole.trainable["prompt"], split.trainable["prompt"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of NUM_MICROBATCHES"):
    _train_step(state, frozen, batch, jax.random.key(0), num_microbatches=3, **kw)


def test_loss_is_cross_entropy_plus_z_loss_per_real_token():
  logits = jnp.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]])
  targets = jnp.array([[0, 2]])
  ce, z = trainer.token_losses(logits, targets, 1e-4)
  log_z = jax.nn.logsumexp(logits, -1)
  np.testing.assert_allclose(ce, log_z - jnp.array([[2.0, 0.5]]), rtol=1e-6)
  np.testing.assert_allclose(z, 1e-4 * log_z**2, rtol=1e-6)


def test_sequence_accuracy_counts_the_sequences_right_in_every_token():
  # Targets [[5, 6, 1, 0], [7, 1, 0, 0], [0, 0, 0, 0]]: the model gets row 0 right, misses row 1's last token; row 2
  # is padding and no sequence.
  targets = jnp.array([[5, 6, 1, 0], [7, 1, 0, 0], [0, 0, 0, 0]])
  predicted = jnp.array([[5, 6, 1, 3], [7, 4, 0, 0], [2, 2, 2, 2]])
  weights = (targets > 0).astype(jnp.float32)
  batch = {"decoder_target_tokens": targets}
  assert [float(x) for x in trainer._sequence_sums(predicted == targets, weights, batch)] == [2.0, 1.0]
  # Packed: the same three sequences in two rows (segments 1 and 2 in row 0): still 2 sequences, 1 right; a wrong
  # token in one segment does not spoil its neighbour.
  packed_targets = jnp.array([[5, 6, 1, 7, 1, 0], [0, 0, 0, 0, 0, 0]])
  packed_predicted = jnp.array([[5, 6, 1, 7, 4, 0], [0, 0, 0, 0, 0, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [0, 0, 0, 0, 0, 0]])
  packed = {"decoder_target_tokens": packed_targets, "decoder_segment_ids": segments}
  packed_weights = (packed_targets > 0).astype(jnp.float32)
  sums = trainer._sequence_sums(packed_predicted == packed_targets, packed_weights, packed)
  assert [float(x) for x in sums] == [2.0, 1.0]
  # Tokens outside the loss weights do not count: with row 1's EOS unweighted, row 1 is right.
  weights = weights.at[1, 1].set(0.0)
  assert [float(x) for x in trainer._sequence_sums(predicted == targets, weights, batch)] == [2.0, 2.0]


def test_class_label_softmax_normalizes_over_the_given_ids_only():
  logits = jnp.array([[[2.0, 0.0, -1.0, 3.0], [0.5, 1.5, 0.5, 9.0]]])
  ids = (0, 2)
  ce, z = trainer.token_losses(logits, jnp.array([[0, 2]]), 1e-4, ids)
  log_z = jax.nn.logsumexp(logits[..., list(ids)], -1)
  np.testing.assert_allclose(ce, log_z - jnp.array([[2.0, 0.5]]), rtol=1e-6)
  np.testing.assert_allclose(z, 1e-4 * log_z**2, rtol=1e-6)
  full, _ = trainer.token_losses(logits, jnp.array([[0, 2]]), 1e-4)
  assert (ce < full).all()
  # A target outside the ids (padding, id 0 in real batches, weight 0) stays finite: weighted by 0 it adds 0, not NaN.
  outside, _ = trainer.token_losses(logits, jnp.array([[0, 3]]), 1e-4, ids)
  assert np.isfinite(outside).all() and float(outside[0, 1] * 0.0) == 0.0


def _label_batch(vocabulary, rows: int) -> dict[str, np.ndarray]:
  labels = [vocabulary.encode(label) + [vocabulary.eos_id] for label in ("no", "yes")]
  targets = np.zeros((rows, 4), np.int32)
  for i in range(rows):
    targets[i, : len(labels[i % 2])] = labels[i % 2]
  rng = np.random.default_rng(0)
  return {
    "encoder_input_tokens": rng.integers(2, 32000, (rows, 16)).astype(np.int32),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


def test_class_label_softmax_reaches_the_loss_the_evaluation_and_the_label_scores(task, tmp_path):
  import seqio

  from prompt_tuning import decoding, partitioning
  from prompt_tuning import eval as evaluation
  from prompt_tuning.run import build_inference

  labelled = tiny_task.register(class_labels=True)
  full = build_inference(_config(tmp_path / "full", mixture_or_task_name=labelled))
  restricted = build_inference(
    _config(tmp_path / "restricted", mixture_or_task_name=labelled, class_label_softmax=True)
  )
  vocabulary = seqio.SentencePieceVocabulary(str(tiny_task.VOCAB_PATH), extra_ids=100)
  assert full.output_ids is None
  assert restricted.output_ids == tuple(sorted({*vocabulary.encode("no"), *vocabulary.encode("yes"), 1}))
  batch = _label_batch(vocabulary, 8)

  def evaluate(run):
    return jax.device_get(run.eval_step(run.trainable, run.frozen, partitioning.shard_batch(batch, run.mesh)))

  # Same parameters (same seed and checkpoint): over fewer ids, every target is more likely.
  assert evaluate(restricted)["cross_entropy"] < evaluate(full)["cross_entropy"]
  scores = {
    name: evaluation.Predictor(run, decoding.DecodingSettings(max_decode_length=4), 8).score(batch)
    for name, run in (("full", full), ("restricted", restricted))
  }
  assert (scores["restricted"] > scores["full"]).all() and (scores["restricted"] < 0).all()
  # eval's decoding (its seqio label metrics) chooses among the same ids: a run trained over its labels' tokens
  # decoded over the whole vocabulary answers with other tokens and scores 0 on every label metric.
  decoded = {
    name: evaluation.Predictor(run, decoding.DecodingSettings(max_decode_length=4), 8).generate(
      batch["encoder_input_tokens"]
    )
    for name, run in (("full", full), ("restricted", restricted))
  }
  assert set(np.unique(decoded["restricted"])) <= {0, *restricted.output_ids}
  assert set(np.unique(decoded["full"])) - {0, *restricted.output_ids}
  # ...and training with it runs and logs a finite loss.
  cfg = _config(tmp_path / "train", mixture_or_task_name=labelled, class_label_softmax=True)
  train.train(cfg, num_train_steps=2, checkpoint_every=2)
  metrics = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
  losses = [m["train/loss"] for m in metrics if "train/loss" in m]
  assert losses and np.isfinite(losses).all()


def test_class_label_softmax_needs_class_labels(task, tmp_path):
  with pytest.raises(ValueError, match=r"declares none: register it with class_labels="):
    train.build(_config(tmp_path / "run", class_label_softmax=True))


def test_adafactor_leaves_prompts_unfactored(reference_dir):
  _, trainable, _, _ = _tiny_setup(reference_dir, r".*")
  trainable = dict(trainable, prompt=jnp.zeros((200, 256)))  # large enough to be factored otherwise
  trainable["t5"]["decoder"]["logits_dense"]["kernel"] = jnp.zeros((256, 32128))
  axes = {
    "t5": pt.param_logical_axes(pt.get_config("t5_1_1_tiny")),
    "prompt": jax.sharding.PartitionSpec("prompt", "prompt_embed"),
  }
  opt = optim.adafactor(logical_axes=axes)
  state = opt.init(trainable)
  leaves = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  prompt_v = [s for k, s in leaves.items() if "'prompt'" in k and ".v" in k and s != (1,)]
  assert (200, 256) in prompt_v  # full second moment for the prompt
  dense = [s for k, s in leaves.items() if "logits_dense" in k and ("v_row" in k or "v_col" in k)]
  assert (256,) in dense and (32128,) in dense  # factored for the big kernel


def test_partition_rejects_patterns_that_select_nothing():
  with pytest.raises(ValueError, match="selects no parameter"):
    optim.partition({"t5": {"a": jnp.zeros(2)}}, "^prompt")
  with pytest.raises(ValueError, match="not a valid regular expression"):
    optim.partition({"t5": {"a": jnp.zeros(2)}}, "(")
  # Allowed where nothing is trained (eval/infer of the frozen model): everything is frozen, and merge inverts it.
  params = {"t5": {"a": jnp.zeros(2)}}
  trainable, frozen = optim.partition(params, "^prompt", allow_empty=True)
  assert trainable == {} and frozen == params and optim.merge(trainable, frozen) == params


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(task, tmp_path):
  cfg = _config(tmp_path / "run", optimizer=optax.adafactor(0.3))
  train.train(cfg, num_train_steps=2, checkpoint_every=1)
  # Same optimizer state layout, but every update is NaN.
  poisoned = optax.adafactor(float("nan"))
  with pytest.raises(train.TrainingError, match=r"not finite at step 3.*last good checkpoint \(step 2\)"):
    train.train(_config(tmp_path / "run", optimizer=poisoned), num_train_steps=6, checkpoint_every=1)
  run = train.build(cfg)
  run.checkpoints.close()
  assert int(run.state.step) == 2 and np.isfinite(run.state.trainable["prompt"]).all()


def test_resume_against_another_backbone_is_refused(task, trained_run, tmp_path):
  model_dir = trained_run.copy(tmp_path)
  config, params = pt.load_pretrained(tiny_task.T5X_TINY, config="t5_1_1_tiny")
  params["encoder"]["encoder_norm"]["scale"] = params["encoder"]["encoder_norm"]["scale"] * 1.01
  other = tmp_path / "other_backbone"
  save_hf_pretrained(other, config, params)
  with pytest.raises(CheckpointError, match="another frozen backbone"):
    train.build(trained_run.config(model_dir, initial_checkpoint_path=str(other), model_size=None))


def test_prompt_plus_input_longer_than_the_maximum_is_refused(task, tmp_path):
  with pytest.raises(ValueError, match=r"prompt length 3 \+ input 16 exceeds max 12: lower PROMPT_LENGTH"):
    train.build(_config(tmp_path / "run", max_encoder_length=12))


def test_prompt_initializer_of_the_wrong_shape_is_refused(task, tmp_path):
  bad = lambda rng, emb, length: jnp.zeros((length, 8))
  with pytest.raises(ValueError, match=r"expected \(3, 4\)"):
    train.build(_config(tmp_path / "run", prompt=Prompt(3, bad)))


def test_missing_required_settings_are_named():
  with pytest.raises(ValueError, match="model_dir is required.*--gin.MODEL_DIR"):
    train.RunConfig(model_dir="", initial_checkpoint_path="x", mixture_or_task_name="t", task_feature_lengths={})


def test_pretraining_from_random_initialization(task, tmp_path):
  cfg = _config(tmp_path / "run", initial_checkpoint_path=None, prompt=None, trainable_pattern=".*")
  train.train(cfg, num_train_steps=2, checkpoint_every=2)
  run = train.build(cfg)
  run.checkpoints.close()
  assert int(run.state.step) == 2 and run.frozen == {}
  fresh = pt.init_params(run.tuned.config, jax.random.key(cfg.seed))
  trained = run.state.trainable["t5"]
  assert not np.allclose(trained["decoder"]["logits_dense"]["kernel"], fresh["decoder"]["logits_dense"]["kernel"])
  np.testing.assert_array_equal(trained["encoder"]["encoder_norm"]["scale"].shape, (4,))
  with pytest.raises(ValueError, match="needs MODEL_SIZE"):
    _config(tmp_path / "x", initial_checkpoint_path=None, model_size=None)


def test_class_labels_longer_than_the_targets_are_refused(reference_dir):
  import seqio

  from prompt_tuning import infer

  vocab = seqio.SentencePieceVocabulary(str(tiny_task.VOCAB_PATH), extra_ids=100)
  targets = infer._label_targets(["yes", "no"], vocab, 4)
  assert targets.shape == (2, 4) and (targets[:, -1] == 0).all()
  with pytest.raises(ValueError, match=r"raise it to at least"):
    infer._label_targets(["not entailment at all", "yes"], vocab, 3)


def test_bucket_lengths_are_bounded_powers_of_two_and_trim_only_padding():
  from prompt_tuning import inputs

  assert [inputs.bucket_length(n, 40) for n in (0, 1, 8, 9, 17, 33, 40)] == [8, 8, 8, 16, 32, 40, 40]
  batch = {
    "encoder_input_tokens": np.pad(np.ones((2, 11), np.int32), ((0, 0), (0, 29))),
    "decoder_target_tokens": np.pad(np.ones((2, 3), np.int32), ((0, 0), (0, 5))),
    "decoder_loss_weights": np.pad(np.ones((2, 2), np.float32), ((0, 0), (0, 6))),
  }
  trimmed = inputs.trim_to_buckets(batch)
  # Each side keeps one length (the loss weights follow the longer targets); nothing non-zero is cut.
  assert {k: v.shape[1] for k, v in trimmed.items()} == {
    "encoder_input_tokens": 16,
    "decoder_target_tokens": 8,
    "decoder_loss_weights": 8,
  }
  assert all(trimmed[k].sum() == batch[k].sum() for k in batch)


def test_length_bucketed_scoring_and_decoding_equal_full_length(task, tmp_path):
  """Sorted, power-of-two-trimmed batches give each example the prediction and score of full-length batches, with
  the prompt placed after each input's own EOS (a combination that moves with the input's length)."""
  import tensorflow as tf

  from prompt_tuning import decoding
  from prompt_tuning import eval as evaluation
  from prompt_tuning.run import build_inference

  run = build_inference(
    _config(tmp_path, task_feature_lengths={"inputs": 40, "targets": 4}, prompt_combination="suffix_after_eos")
  )
  rng = np.random.default_rng(1)
  lengths = [3, 38, 9, 17, 5, 30, 12, 2, 25, 7]  # buckets 8, 16, 32 and the full 40
  encoder = np.zeros((len(lengths), 40), np.int32)
  for row, used in enumerate(lengths):
    encoder[row, :used] = np.append(rng.integers(2, 32000, used - 1), 1)  # ... EOS
  targets = np.zeros((len(lengths), 4), np.int32)
  targets[:, :2] = np.stack([rng.integers(2, 32000, len(lengths)), np.ones(len(lengths), np.int32)], axis=1)
  features = {
    "encoder_input_tokens": encoder,
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.int32),
  }
  dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(lengths)), features))
  settings = decoding.DecodingSettings(max_decode_length=3)
  results = {}
  for bucketed in (False, True):
    predictor = evaluation.Predictor(run, settings, 4, bucket_lengths=bucketed)
    results[bucketed] = (dict(predictor.score_fn(dataset)), dict(predictor.predict_fn(dataset)))
  (full_scores, full_tokens), (scores, tokens) = results[False], results[True]
  assert tokens == full_tokens
  np.testing.assert_allclose([scores[i] for i in range(10)], [full_scores[i] for i in range(10)], rtol=1e-5, atol=1e-5)
  # Batches of similar length (sorted: 2-7 | 9-25 | 30, 38): the shortest four share the smallest bucket.
  shapes = [f["encoder_input_tokens"].shape[1] for _, f, _ in evaluation.Predictor(run, settings, 4)._batches(dataset)]
  assert shapes == [8, 32, 40]
