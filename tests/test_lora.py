"""LoRA (prompt_tuning.methods.LoRA): step 0 is the frozen model; training moves the factors only and lowers the loss;
rows of a mixed batch, decoding through the cache (cross-attention included), the fold/export/load round trip and
the inference build give what the factors give alone; PEFT's LoRA adapters match ours both ways on the same
Hugging Face T5; bad factors are refused with what was expected."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding
from prompt_tuning.decoding import DecodingSettings
from prompt_tuning.methods import LoRA
from prompt_tuning.methods import lora as lora_module

TARGETS = lora_module.TARGETS


@functools.cache
def _logits(config):
  return jax.jit(
    lambda params, adapters, enc, dec, targets: pt.T5(config).apply(
      {"params": params}, enc, dec, targets, adapters=adapters
    )
  )


def _trained(method, frozen, config, seed):
  """Factors as after training: A from the initializer, B random (B = 0 would be the frozen model)."""
  params = method.init(jax.random.key(seed), frozen, config)
  keys = iter(jax.random.split(jax.random.key(100 + seed), 64))
  return jax.tree.map(lambda x: 0.3 * jax.random.normal(next(keys), x.shape) if not x.any() else x, params)


def test_b_at_zero_is_the_frozen_model_and_every_target_is_read(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  method = LoRA(rank=4)
  params = method.init(jax.random.key(0), frozen, config)
  assert set(params) == {"encoder", "decoder"} and set(params["decoder"]) == {"self_attention", "cross_attention"}
  a = np.asarray(params["encoder"]["self_attention"]["query_a"])
  assert a.shape == (config.num_encoder_layers, config.emb_dim, 4)
  assert 0 < np.abs(a).max() <= config.emb_dim**-0.5  # PEFT's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(D), 1/sqrt(D))
  base = _logits(config)(frozen, None, *batch)
  np.testing.assert_array_equal(_logits(config)(frozen, method.adapters(params, config), *batch), base)
  for target in TARGETS:
    stack, attention = target.split()
    for projection in ("query", "value"):
      one = jax.tree.map(lambda x: x, params)
      leaves = one[stack][attention]
      leaves[f"{projection}_b"] = jnp.full_like(leaves[f"{projection}_b"], 0.5)
      changed = _logits(config)(frozen, method.adapters(one, config), *batch)
      assert not np.allclose(changed, base, atol=1e-4), (target, projection)


def test_settings_are_checked_and_targets_follow_the_model(tiny_decoder_model):
  config, frozen = tiny_decoder_model
  for bad, match in (
    (dict(rank=0), "rank must be a positive integer"),
    (dict(alpha=0.0), "alpha must be > 0"),
    (dict(targets=["encoder cross_attention"]), "give each of"),
    (dict(targets=[]), "at least one"),
    (dict(initializer="xavier"), "use one of"),
  ):
    with pytest.raises(ValueError, match=match):
      LoRA(**bad)
  only = LoRA(rank=2, targets=["decoder cross_attention"]).init(jax.random.key(0), frozen, config)
  assert set(only) == {"decoder"} and set(only["decoder"]) == {"cross_attention"}
  gaussian = LoRA(rank=4, initializer="gaussian").init(jax.random.key(0), frozen, config)
  assert 0.1 < float(np.std(gaussian["encoder"]["self_attention"]["value_a"])) < 0.5  # N(0, 1/r^2): std 0.25
  decoder_only = pt.get_config("decoder_only_tiny")
  tree = LoRA().init(jax.random.key(0), None, decoder_only)
  assert set(tree) == {"decoder"} and set(tree["decoder"]) == {"self_attention"}
  with pytest.raises(ValueError, match="not attentions of this model"):
    LoRA(targets=["encoder self_attention"]).init(jax.random.key(0), None, decoder_only)
  assert LoRA(rank=4, alpha=16.0).scaling == 4.0 and LoRA(rank=4, alpha=16.0, rank_stabilized=True).scaling == 8.0


def _stack_rows(trees):
  """Per-row adapters: every leaf [L, ...] of each row stacked into [L, B, ...]."""
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *trees)


def test_rows_of_a_mixed_batch_equal_rows_alone(tiny_decoder_model, batch):
  """Two LoRA rows and a soft-prompt row in one batch, as a server stacks them (the prompt row's factors at zero,
  the LoRA rows' prompt length 0), each equal to the row run alone."""
  config, frozen = tiny_decoder_model
  method = LoRA(rank=3, alpha=6.0)
  rows = [method.fold(_trained(method, frozen, config, seed), config) for seed in (1, 2)]
  rows.append(jax.tree.map(jnp.zeros_like, rows[0]))  # the prompt row: no LoRA (zeros: the identity)
  prompt = jax.random.uniform(jax.random.key(12), (3, config.emb_dim), minval=-0.5, maxval=0.5)  # [P, D]
  mixed_adapters = _stack_rows(rows) | {
    "input": {"prompt": jnp.broadcast_to(prompt, (3, 3, config.emb_dim)), "prompt_lengths": jnp.array([0, 0, 3])}
  }
  mixed = _logits(config)(frozen, mixed_adapters, *batch)
  alone = [method.adapters(rows[0], config), method.adapters(rows[1], config), {"input": {"prompt": prompt}}]
  for r in range(3):
    one = _logits(config)(frozen, alone[r], *(x[r : r + 1] for x in batch))
    np.testing.assert_allclose(mixed[r], one[0], rtol=1e-5, atol=1e-5)


def test_decoding_equals_teacher_forced_scoring(tiny_decoder_model, batch):
  """Greedy decoding through the KV cache gives the argmax of the teacher-forced logits and their scores: the
  cross-attention's value delta must be in its cache, made once from the encoder output (without it this fails)."""
  config, frozen = tiny_decoder_model
  method = LoRA(rank=4)
  adapters = method.adapters(_trained(method, frozen, config, 3), config)
  enc = batch[0]
  out = decoding.generate(config, frozen, enc, adapters=adapters, settings=DecodingSettings(max_decode_length=5))
  tokens = np.asarray(out.tokens)
  dec_in = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  logits = np.asarray(_logits(config)(frozen, adapters, enc, dec_in, tokens))
  for row in range(tokens.shape[0]):
    n = int(np.argmax(tokens[row] == 1)) + 1 if (tokens[row] == 1).any() else tokens.shape[1]  # up to EOS
    np.testing.assert_array_equal(logits[row, :n].argmax(-1), tokens[row, :n])
  forced = decoding.sequence_log_probs(config, frozen, enc, out.tokens, adapters=adapters)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
  # Per-row factors, through beam search's repeated rows: each row decodes as it does alone.
  rows = [method.fold(_trained(method, frozen, config, seed), config) for seed in (4, 5, 6)]
  beam = DecodingSettings("beam", max_decode_length=4, num_beams=2)
  mixed = decoding.generate(config, frozen, enc, adapters=_stack_rows(rows), settings=beam)
  for r in range(3):
    alone = decoding.generate(config, frozen, enc[r : r + 1], adapters=rows[r], settings=beam)
    np.testing.assert_array_equal(np.asarray(mixed.tokens)[r], np.asarray(alone.tokens)[0])


def test_decoder_only_decoding_with_lora_equals_teacher_forced_scoring():
  """Decoder-only: the prefilled inputs and every decoded step go through the self-attention's cache with LoRA."""
  config = pt.get_config("decoder_only_tiny", vocab_size=64)
  params = pt.init_params(config, jax.random.key(0))
  method = LoRA(rank=4)
  adapters = method.adapters(_trained(method, params, config, 13), config)
  assert set(adapters) == {"decoder"}
  inputs = np.random.default_rng(1).integers(2, 64, (2, 5))
  kwargs = dict(decoder_prompt_tokens=inputs, adapters=adapters)
  out = decoding.generate(config, params, settings=DecodingSettings(max_decode_length=4), **kwargs)
  forced = decoding.sequence_log_probs(config, params, None, out.tokens, **kwargs)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
  plain = decoding.sequence_log_probs(config, params, None, out.tokens, decoder_prompt_tokens=inputs)
  assert not np.allclose(plain, forced, atol=1e-3)  # the factors took part


def test_fold_export_and_load_serve_the_trained_logits(tiny_decoder_model, batch, tmp_path):
  config, frozen = tiny_decoder_model
  method = LoRA(rank=4, alpha=16.0)
  params = _trained(method, frozen, config, 7)
  folded = method.fold(params, config)
  assert lora_module.is_folded(folded) and not lora_module.is_folded(params)
  site = folded["decoder"]["cross_attention"]
  assert set(site) == {"lora_query_a", "lora_query_b", "lora_value_a", "lora_value_b"}
  np.testing.assert_array_equal(site["lora_value_b"], params["decoder"]["cross_attention"]["value_b"] * 4.0)
  assert method.fold(folded, config) is folded
  written = method.export(params, config, tmp_path)
  assert {p.name for p in written} >= {"lora.safetensors", "lora.decoder.cross_attention.lora_value_b.npy"}
  loaded = method.load(tmp_path, config)
  for leaf, expected in zip(jax.tree.leaves(loaded), jax.tree.leaves(folded)):
    np.testing.assert_array_equal(leaf, expected)
  trained = _logits(config)(frozen, method.adapters(params, config), *batch)
  served = _logits(config)(frozen, method.adapters(jax.tree.map(jnp.asarray, loaded), config), *batch)
  np.testing.assert_allclose(served, trained, rtol=1e-6, atol=1e-6)


def test_bad_factors_are_refused_with_what_was_expected(tiny_decoder_model, batch, tmp_path):
  config, frozen = tiny_decoder_model
  method = LoRA(rank=2)
  good = {
    f"{stack}/{attention}/{name}": np.asarray(x)
    for stack, attentions in method.fold(_trained(method, frozen, config, 8), config).items()
    for attention, leaves in attentions.items()
    for name, x in leaves.items()
  }
  LoRA.check_factors(good, config)  # flat "/" names, as an upload gives them
  LoRA.check_factors({k: v for k, v in good.items() if k.startswith("encoder/")}, config)  # a subset of attentions
  q_a, q_b = "encoder/self_attention/lora_query_a", "encoder/self_attention/lora_query_b"
  cases = (
    ({**good, q_a: good[q_a][:, :-1]}, r"lora_query_a and lora_query_b have shapes \(2, 15, 2\).*needs \[2, 16, r\]"),
    ({**good, q_b: good[q_b][:, :1]}, r"with one rank r >= 1"),
    ({**good, q_a: good[q_a][:1]}, r"needs \[2, 16, r\] and \[2, r, 16\]"),
    ({k: v for k, v in good.items() if k != q_b}, r"expected exactly \['lora_query_a', 'lora_query_b'"),
    ({**good, "encoder/cross_attention/lora_query_a": good[q_a]}, r"this model takes any of"),
    ({**good, q_a: np.full_like(good[q_a], np.nan)}, r"NaN or infinite"),
    ({"lora_query_a": good[q_a]}, r"name the factors <stack>/<attention>/<name>"),
    ({}, r"LoRA factors for no attention"),
  )
  for arrays, match in cases:
    with pytest.raises(ValueError, match=match):
      LoRA.check_factors(arrays, config)
  # A damaged export is refused on load; factors handed to the model directly are checked at the site.
  method.export(method.init(jax.random.key(0), frozen, config), config, tmp_path)
  from safetensors.numpy import load_file, save_file

  tensors = load_file(str(tmp_path / "lora.safetensors"))
  tensors["encoder.self_attention.lora_value_b"] = tensors["encoder.self_attention.lora_value_b"][..., :3]
  save_file(tensors, str(tmp_path / "lora.safetensors"))
  with pytest.raises(ValueError, match="lora_value_a and lora_value_b have shapes"):
    method.load(tmp_path, config)
  with pytest.raises(ValueError, match=r"LoRA at encoder/self_attention has lora_value_a, lora_value_b"):
    bad = {"encoder": {"self_attention": {"lora_value_a": jnp.ones((2, 16, 2)), "lora_value_b": jnp.ones((2, 3, 16))}}}
    pt.T5(config).apply({"params": frozen}, *batch, adapters=bad)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  pytest.importorskip("seqio")
  import method_runs

  return method_runs.write_backbone(tmp_path_factory.mktemp("backbone"))


def _run_config(model_dir, backbone):
  import method_runs

  return method_runs.run_config(model_dir, backbone, "lora")


def test_training_moves_only_the_factors_and_lowers_the_loss(backbone, tmp_path):
  import method_runs

  from prompt_tuning import optim, partitioning, train

  run = train.build(_run_config(tmp_path / "run", backbone))
  run.checkpoints.close()
  assert set(run.state.trainable) == {"lora"}
  flat = lambda tree: {k: np.asarray(v) for k, v in optim._flat(jax.device_get(tree)).items()}  # noqa: E731
  before = flat(optim.merge(run.state.trainable, run.frozen))
  batch = partitioning.shard_batch(method_runs.synthetic_batch(), run.mesh)
  state, losses = run.state, []
  for step in range(4):
    state, metrics = run.train_step(state, run.frozen, batch, jax.random.key(step))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0], losses
  after = flat(optim.merge(state.trainable, run.frozen))
  changed = {k for k in after if not np.array_equal(before[k], after[k])}
  lora_leaves = {k for k in after if k.startswith("lora/")}
  assert changed == lora_leaves and len(lora_leaves) == 3 * 4, sorted(changed)  # 3 attentions x (A, B) x (q, v)


def test_the_inference_build_serves_the_folded_factors_training_left(backbone, tmp_path):
  import method_runs

  from prompt_tuning import partitioning, train
  from prompt_tuning.run import build_inference

  cfg = _run_config(tmp_path / "run", backbone)
  train.train(cfg, num_train_steps=2, checkpoint_every=2)
  assert (tmp_path / "run" / "numpy_checkpoints" / "checkpoint_2" / "lora.safetensors").is_file()
  training = train.build(cfg)
  training.checkpoints.close()
  served = build_inference(cfg)
  assert served.step == 2 and served.source.startswith("the exports of step 2")
  assert lora_module.is_folded(served.trainable["lora"]) and not lora_module.is_folded(training.trainable["lora"])
  batch = partitioning.shard_batch(method_runs.synthetic_batch(seed=3), served.mesh)
  expected = jax.device_get(training.eval_step(training.trainable, training.frozen, batch))
  got = jax.device_get(served.eval_step(served.trainable, served.frozen, batch))
  np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)


@pytest.fixture(scope="module", params=["t5_1_0", "t5_1_1"])
def hf_t5(request, tmp_path_factory):
  """(Hugging Face T5, our config, our params of the same weights) for the PEFT parity tests."""
  pytest.importorskip("torch")
  pytest.importorskip("peft")
  import hf_models

  model = hf_models.hf_model(request.param)
  config, params = pt.load_pretrained(hf_models.save(model, tmp_path_factory.mktemp(request.param)))
  return model, config, params


def _hf_batch(seed):
  import hf_models

  rng = np.random.default_rng(seed)
  enc = hf_models.padded_batch(rng, 3, 9, 100, [9, 5, 2])
  targets = hf_models.padded_batch(rng, 3, 6, 100, [6, 4, 1])
  return enc, hf_models.shift_right(targets), targets


def _peft_logits(model, folder_or_config, batch, randomize_b=False):
  """PEFT's logits on `batch` with the adapter in a folder (or a fresh one from a LoraConfig, B made random)."""
  import copy

  import hf_models
  import peft
  import torch

  base = copy.deepcopy(model).eval()  # PEFT wraps (and mutates) the model it is given
  if isinstance(folder_or_config, peft.LoraConfig):
    wrapped = peft.get_peft_model(base, folder_or_config).eval()
    with torch.no_grad():
      for name, weight in wrapped.named_parameters():
        if "lora_B" in name:
          weight.normal_(std=0.3)
  else:
    wrapped = peft.PeftModel.from_pretrained(base, folder_or_config).eval()
  return wrapped, hf_models.seq2seq_logits(wrapped, *batch)


def _rel_err(ours, theirs, targets):
  mask = targets > 0
  return np.abs(np.asarray(ours) - theirs)[mask].max() / np.abs(theirs)[mask].max()


@pytest.mark.parametrize("targets", [None, ("decoder cross_attention",)])
def test_our_peft_export_loads_in_peft_with_our_logits(hf_t5, tmp_path, targets):
  model, config, params = hf_t5
  method = LoRA(rank=4, alpha=16.0, targets=targets)
  trained = _trained(method, params, config, 9)
  folder = method.export_peft(trained, config, tmp_path, base_model_name_or_path="tiny-t5")
  batch = _hf_batch(1)
  wrapped, theirs = _peft_logits(model, folder, batch)
  ours = _logits(config)(params, method.adapters(trained, config), *batch)
  frozen = _logits(config)(params, None, *batch)
  assert _rel_err(frozen, theirs, batch[2]) > 1e-3  # the factors matter
  assert _rel_err(ours, theirs, batch[2]) < 1e-5
  # PEFT holds our factors, transposed to PyTorch's [out, in], and scales as we do.
  module = wrapped.base_model.model.decoder.block[1].layer[1].EncDecAttention.v
  a = trained["decoder"]["cross_attention"]["value_a"][1]  # [D, r]
  np.testing.assert_array_equal(module.lora_A["default"].weight.detach().numpy(), np.asarray(a).T)
  assert module.scaling["default"] == method.scaling
  # Reading the folder back gives the settings and the folded factors.
  settings, tree = lora_module.read_peft(folder, config)
  expected_targets = targets or TARGETS
  assert (settings.rank, settings.alpha, settings.targets) == (4, 16.0, expected_targets)
  for leaf, expected in zip(jax.tree.leaves(tree), jax.tree.leaves(method.fold(trained, config))):
    np.testing.assert_allclose(leaf, expected, rtol=1e-6, atol=1e-7)


def test_an_adapter_saved_by_peft_imports_with_its_logits(hf_t5, tmp_path):
  import peft

  model, config, params = hf_t5
  rank_stabilized = config.mlp_activations != ("relu",)  # rsLoRA on the T5 1.1 model, plain LoRA on 1.0
  lora_config = peft.LoraConfig(
    task_type=peft.TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=16, target_modules=["q", "v"], use_rslora=rank_stabilized
  )
  batch = _hf_batch(2)
  wrapped, theirs = _peft_logits(model, lora_config, batch)
  wrapped.save_pretrained(tmp_path)
  settings, tree = lora_module.read_peft(tmp_path, config)
  assert settings == LoRA(rank=4, alpha=16.0, targets=TARGETS, rank_stabilized=rank_stabilized)
  ours = _logits(config)(params, settings.adapters(tree, config), *batch)
  assert _rel_err(ours, theirs, batch[2]) < 1e-5
  # The run's method reads it when its settings are the adapter's, and says which differ otherwise.
  same = LoRA(rank=4, alpha=16.0, rank_stabilized=rank_stabilized).load_peft(tmp_path, config)
  assert jax.tree.structure(same) == jax.tree.structure(tree)
  with pytest.raises(ValueError, match="has rank 4, alpha 16.0.*this run's LoRA has rank 8"):
    LoRA(rank_stabilized=rank_stabilized).load_peft(tmp_path, config)


def test_peft_adapters_we_cannot_represent_are_refused(tmp_path):
  pytest.importorskip("peft")
  import copy

  import hf_models
  import peft

  model = hf_models.hf_model("t5_1_0")
  config = pt.get_config("t5_1_0_tiny")  # only the names are read before the refusals below
  for name, lora_config, match in (
    (
      "ko",
      peft.LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["k", "o"]),
      r"only LoRA factors of a T5's q and v",
    ),
    ("dora", peft.LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"], use_dora=True), "DoRA"),
    ("prompt", peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2), "not LORA"),
  ):
    peft.get_peft_model(copy.deepcopy(model), lora_config).save_pretrained(tmp_path / name)
    with pytest.raises(ValueError, match=match):
      lora_module.read_peft(tmp_path / name, config)
  with pytest.raises(FileNotFoundError, match="not a PEFT LoRA adapter folder"):
    lora_module.read_peft(tmp_path, config)


def test_bfloat16_activations_keep_step_0_exact_and_the_deltas(tiny_decoder_model, batch):
  """The factors run in the activation dtype with float32 accumulation: B = 0 is still the frozen bfloat16 model
  exactly, and trained factors give the float32 logits to bfloat16's precision."""
  config, frozen = tiny_decoder_model
  bf16 = config.replace(dtype="bfloat16")
  method = LoRA(rank=4)
  zero = method.adapters(method.init(jax.random.key(0), frozen, config), config)
  np.testing.assert_array_equal(_logits(bf16)(frozen, zero, *batch), _logits(bf16)(frozen, None, *batch))
  trained = method.adapters(_trained(method, frozen, config, 11), config)
  reference = np.asarray(_logits(config)(frozen, trained, *batch))
  got = np.asarray(_logits(bf16)(frozen, trained, *batch), np.float32)
  frozen_gap = np.abs(reference - np.asarray(_logits(config)(frozen, None, *batch))).max()
  error = np.abs(got - reference).max()
  assert error < 0.1 * frozen_gap, (error, frozen_gap)  # the deltas survive bfloat16, far above its rounding


def test_lora_rows_are_served_mixed_with_prompt_rows(tiny_decoder_model, tmp_path):
  """The server's engine and library take LoRA exports as they are (the library entry is the export) and pad them
  by the site contract: rows of rank 2 and 3 under a width of 4, a soft prompt's row and the frozen model's, in one
  scoring batch, each score what the row's own vectors give alone."""
  from prompt_tuning import partitioning
  from prompt_tuning.methods.base import PromptError
  from prompt_tuning.serve.engine import Engine, EngineShapes
  from prompt_tuning.serve.store import PromptLibrary, read_entry_file

  config, frozen = tiny_decoder_model
  shapes = EngineShapes(
    slots=2, input_buckets=(8,), max_prompt_length=4, max_prefix_length=0, max_rank=4, max_decode_length=4,
    admit_buckets=(1,), score_buckets=(4,), max_target_length=5, beam_buckets=(1,), methods=("prompt", "lora"),
  )  # fmt: skip
  engine = Engine(config, frozen, partitioning.make_mesh(), shapes)
  library = PromptLibrary(engine.limits(), max_library_bytes=1 << 20)
  own = {}
  for name, method, seed in (("r2", LoRA(rank=2), 1), ("r3", LoRA(rank=3, targets=("decoder cross_attention",)), 2)):
    params = _trained(method, frozen, config, seed)
    method.export(params, config, tmp_path / name)
    library.put(name, *read_entry_file(tmp_path / name / "lora.safetensors"))
    own[name] = method.adapters(params, config)
  prompt = jax.random.uniform(jax.random.key(3), (3, config.emb_dim), minval=-0.5, maxval=0.5)
  library.put("prompt", "prompt", {"prompt": np.asarray(prompt)})
  own["prompt"] = {"input": {"prompt": prompt}}
  with pytest.raises(PromptError, match="rank axis of method 'lora' is 5 long; this server takes 1 to 4"):
    method = LoRA(rank=5)
    method.export(_trained(method, frozen, config, 4), config, tmp_path / "r5")
    library.put("r5", *read_entry_file(tmp_path / "r5" / "lora.safetensors"))
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 64, (4, 8)).astype(np.int32)
  targets = rng.integers(2, 64, (4, 5)).astype(np.int32)
  targets[:, -1] = 1
  order = ["r3", "prompt", None, "r2"]
  scores = engine.score(tokens, targets, [engine.row_vectors(None if n is None else library.get(n)) for n in order])
  for i, name in enumerate(order):
    adapters = None if name is None else own[name]
    alone = decoding.sequence_log_probs(config, frozen, tokens[i : i + 1], targets[i : i + 1], adapters=adapters)
    np.testing.assert_allclose(scores[i], np.asarray(alone)[0], rtol=1e-4, atol=1e-4, err_msg=str(name))
  assert len({round(float(s), 3) for s in scores}) == 4  # every row's vectors took part
