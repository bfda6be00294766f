"""The tuning-method interface: IA3 and per-layer prompts reach the backbone through their sites, in mixed
batches, through the decode cache and under remat; every method exports and loads its folded form; ATTEMPT's prompt
is computed per example from its input (its library sources and gin run: tests/test_attempt.py)."""

import functools

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding, transfer
from prompt_tuning.decoding import DecodingSettings
from prompt_tuning.methods import ATTEMPT, IA3, Limits, PerLayerPrompt, PrefixSettings, Prompt, PromptError
from prompt_tuning.methods.attempt import SourcesChangedError
from prompt_tuning.models import adapters as sites
from prompt_tuning.prompts import random_uniform
from prompt_tuning.tuning import TunedT5

_uniform = random_uniform(0.5)  # Lester et al.'s uniform in [-0.5, 0.5], the project's own initializer


def _random_like(tree, key):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@functools.cache
def _logits(config):
  return jax.jit(
    lambda params, adapters, enc, dec, targets: pt.T5(config).apply(
      {"params": params}, enc, dec, targets, adapters=adapters
    )
  )


def test_ia3_at_ones_is_the_frozen_model_and_trained_scales_change_it(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  ia3 = IA3()
  ones = ia3.init(jax.random.key(0), frozen, config)
  assert set(ones["decoder"]) == {"self_attention", "cross_attention", "mlp"}
  base = _logits(config)(frozen, None, *batch)
  np.testing.assert_allclose(_logits(config)(frozen, ia3.adapters(ones, config), *batch), base, rtol=1e-6)
  for site in ("self_attention", "mlp"):
    scaled = jax.tree.map(lambda x: x, ones)
    scaled["encoder"][site] = jax.tree.map(lambda x: 2.0 * x, scaled["encoder"][site])
    assert not np.allclose(_logits(config)(frozen, scaled, *batch), base, atol=1e-4), site


@pytest.mark.parametrize("method", ["ia3", "per_layer_prompt"])
def test_mixed_batch_rows_equal_rows_run_alone(tiny_decoder_model, batch, method):
  config, frozen = tiny_decoder_model
  m = IA3() if method == "ia3" else PerLayerPrompt(3, _uniform)
  rows = [_random_like(m.init(jax.random.key(r), frozen, config), jax.random.key(10 + r)) for r in range(3)]
  per_row = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *[m.adapters(p, config) for p in rows])
  # The input prompt's batch axis comes first; the per-layer sites keep [layers] first.
  if "input" in per_row:
    per_row["input"]["prompt"] = jnp.moveaxis(per_row["input"]["prompt"], 1, 0)
  mixed = _logits(config)(frozen, per_row, *batch)
  for r in range(3):
    alone = _logits(config)(frozen, m.adapters(rows[r], config), *(x[r : r + 1] for x in batch))
    np.testing.assert_allclose(mixed[r], alone[0], rtol=1e-5, atol=1e-5)


def test_per_layer_modes_and_plain_prompts_share_a_batch(tiny_decoder_model, batch):
  """A replacing row (its replace_mask on), an adding row and a plain prompt row (mask off, zeros) in one batch,
  as the server stacks them, each equal to the row alone."""
  config, frozen = tiny_decoder_model
  replace, add = PerLayerPrompt(3, _uniform), PerLayerPrompt(3, _uniform, mode="add")
  params = [
    _random_like(m.init(jax.random.key(r), frozen, config), jax.random.key(20 + r))
    for r, m in enumerate((replace, add))
  ]
  plain = _uniform(jax.random.key(7), frozen["token_embedder"]["embedding"], 3)
  alone = [replace.adapters(params[0], config), add.adapters(params[1], config), {"input": {"prompt": plain}}]
  zeros = jnp.zeros_like(params[0]["prompts"])  # [L, P, D]
  on, off = jnp.ones(zeros.shape[:2], bool), jnp.zeros(zeros.shape[:2], bool)
  hidden = {  # per row: [L, B, ...]
    "replace": jnp.stack([params[0]["prompts"], zeros, zeros], axis=1),
    "replace_mask": jnp.stack([on, off, off], axis=1),
    "add": jnp.stack([zeros, alone[1]["encoder"]["hidden"]["add"], zeros], axis=1),
  }
  prompt = jnp.stack([params[0]["prompts"][0], params[1]["prompts"][0], plain])  # [B, P, D]
  mixed = _logits(config)(frozen, {"input": {"prompt": prompt}, "encoder": {"hidden": hidden}}, *batch)
  for r in range(3):
    one = _logits(config)(frozen, alone[r], *(x[r : r + 1] for x in batch))
    np.testing.assert_allclose(mixed[r], one[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ia3", "per_layer_prompt"])
def test_decoding_equals_teacher_forced_scoring(tiny_decoder_model, batch, method):
  config, frozen = tiny_decoder_model
  m = IA3() if method == "ia3" else PerLayerPrompt(3, _uniform)
  params = _random_like(m.init(jax.random.key(1), frozen, config), jax.random.key(2))
  adapters = m.adapters(params, config)
  for settings in (DecodingSettings(max_decode_length=4), DecodingSettings("beam", max_decode_length=4, num_beams=2)):
    out = decoding.generate(config, frozen, batch[0], adapters=adapters, settings=settings)
    forced = decoding.sequence_log_probs(config, frozen, batch[0], out.tokens, adapters=adapters)
    if settings.method == "greedy":
      np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
    assert np.isfinite(np.asarray(forced)).all()


def test_per_layer_prompt_add_mode_starts_as_prompt_tuning(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  deep = PerLayerPrompt(3, _uniform, mode="add")
  params = deep.init(jax.random.key(4), frozen, config)
  assert not np.asarray(params["prompts"][1:]).any()
  plain = _logits(config)(frozen, {"input": {"prompt": params["prompts"][0]}}, *batch)
  np.testing.assert_allclose(_logits(config)(frozen, deep.adapters(params, config), *batch), plain, rtol=1e-6)
  params = {"prompts": params["prompts"].at[1].set(1.0)}
  assert not np.allclose(_logits(config)(frozen, deep.adapters(params, config), *batch), plain, atol=1e-4)


def test_per_layer_prompts_follow_the_prompt_in_every_combination_mode(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  m = PerLayerPrompt(3, _uniform)
  adapters = m.adapters(m.init(jax.random.key(5), frozen, config), config)
  for mode in ("prefix", "suffix"):
    enc = jitted.apply(pt.T5(config), {"params": frozen}, batch[0], adapters, False, mode, method=pt.T5.encode)[0]
    without_hidden = {"input": adapters["input"]}
    ref = jitted.apply(pt.T5(config), {"params": frozen}, batch[0], without_hidden, False, mode, method=pt.T5.encode)[0]
    assert not np.allclose(enc, ref, atol=1e-4), mode


def test_remat_takes_the_adapter_sites(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  tree = sites.merge(
    IA3().adapters(_random_like(IA3().init(None, frozen, config), jax.random.key(6)), config),
    PerLayerPrompt(2, _uniform).adapters(PerLayerPrompt(2, _uniform).init(jax.random.key(7), frozen, config), config),
  )
  ref = _logits(config)(frozen, tree, *batch)
  np.testing.assert_allclose(_logits(config.replace(remat=True))(frozen, tree, *batch), ref, rtol=1e-5, atol=1e-5)


def test_two_methods_on_one_site_are_refused(tiny_decoder_model):
  config, frozen = tiny_decoder_model
  tuned = TunedT5(config, (Prompt(2, _uniform), PerLayerPrompt(2, _uniform)))
  params = {"t5": frozen, **tuned.init_vectors(jax.random.key(0), frozen)}
  with pytest.raises(ValueError, match="two tuning methods feed the adapter site input/prompt"):
    tuned.adapters(params)
  with pytest.raises(ValueError, match="repeat a name"):
    TunedT5(config, (IA3(), IA3(mlp=False)))
  with pytest.raises(ValueError, match="a decoder-only model has no encoder"):
    PerLayerPrompt(2, _uniform).init(jax.random.key(0), frozen, pt.get_config("decoder_only_tiny"))
  with pytest.raises(ValueError, match="Unknown adapter site encoder/cross_attention"):
    pt.T5(config).apply(
      {"params": frozen},
      np.ones((1, 2), int),
      np.ones((1, 2), int),
      adapters={"encoder": {"cross_attention": {"key_scale": jnp.ones((2, 16))}}},
    )


@pytest.mark.parametrize("method", ["prompt", "prefix", "per_layer_prompt", "ia3"])
def test_export_then_load_serves_the_same_logits(tiny_decoder_model, batch, tmp_path, method):
  config, frozen = tiny_decoder_model
  m = {
    "prompt": Prompt(3, _uniform),
    "prefix": PrefixSettings(2, mlp_width=8),
    "per_layer_prompt": PerLayerPrompt(3, _uniform),
    "ia3": IA3(),
  }[method]
  params = _random_like(m.init(jax.random.key(8), frozen, config), jax.random.key(9))
  written = m.export(params, config, tmp_path)
  assert {p.suffix for p in written} == {".npy", ".safetensors"}
  loaded = m.load(tmp_path, config)
  if method == "prefix":  # folded: the MLP is gone (Li & Liang, section 4.3)
    assert "mlp" not in loaded and set(loaded) == {"encoder", "decoder", "cross"}
  trained = _logits(config)(frozen, m.adapters(params, config), *batch)
  served = _logits(config)(frozen, m.adapters(jax.tree.map(jnp.asarray, loaded), config), *batch)
  np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-5)


def _attempt_sources(width: int, count: int = 2) -> transfer.SourcePrompts:
  rng = np.random.default_rng(7)
  sources = (
    transfer.Source(f"s{i}", None, "prompt", rng.normal(size=(3, width)).astype(np.float32), None) for i in range(count)
  )
  return transfer.SourcePrompts(tuple(sources))


@pytest.fixture(scope="module")
def attempt(tiny_decoder_model):
  """(ATTEMPT over 2 random sources [3, D], its fresh trained tree)."""
  config, frozen = tiny_decoder_model
  method = ATTEMPT(3, _attempt_sources(config.emb_dim), _uniform, projection_dim=4)
  return method, method.init(jax.random.key(1), frozen, config)


def test_attempt_mixes_the_sources_per_example_and_trains_only_target_and_projection(
  tiny_decoder_model, batch, attempt
):
  config, frozen = tiny_decoder_model
  method, params = attempt
  assert set(params) == {"target", "down", "up", "norm"}  # the sources are not trained: no optimizer sees them
  prompt, weights = method.attention(params, frozen["token_embedder"]["embedding"], jnp.asarray(batch[0]))
  weights = np.asarray(weights)
  assert weights.shape == (3, 3)  # 3 rows; 2 sources and the target
  np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
  assert np.ptp(weights, axis=0).max() > 1e-4  # the weights differ between examples
  # Section 3.2: P_instance = P_target + sum_j a_j P_j, the sum over the sources and the target.
  prompts = np.concatenate([method.source_prompts, [params["target"]]])
  np.testing.assert_allclose(
    prompt, params["target"] + np.einsum("bk,kpd->bpd", weights, prompts), rtol=1e-5, atol=1e-6
  )
  tuned = TunedT5(config, (method,))
  rows = {"encoder_input_tokens": batch[0], "decoder_input_tokens": batch[1], "decoder_target_tokens": batch[2]}

  def loss(trained):
    logits = tuned.forward({"t5": frozen, "attempt": trained}, rows, False, jax.random.key(0))
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  grads = jax.jit(jax.grad(loss))(params)
  for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.abs(np.asarray(grad)).max() > 0, jax.tree_util.keystr(path)
  packed = {**rows, "encoder_segment_ids": (batch[0] > 0).astype(np.int32)}
  with pytest.raises(ValueError, match="set PACK = False"):
    jax.eval_shape(lambda p: tuned.forward(p, packed, False, None), {"t5": frozen, "attempt": params})


def test_attempt_export_then_load_decodes_the_same_and_the_server_refuses_it(
  tiny_decoder_model, batch, attempt, tmp_path
):
  config, frozen = tiny_decoder_model
  method, params = attempt
  params = jax.tree.map(lambda x: x + 0.1, params)  # trained away from the initialization
  method.export(params, config, tmp_path, {"backbone_path": "tiny"})
  loaded = method.load(tmp_path, config)
  np.testing.assert_array_equal(loaded["sources"], method.source_prompts)  # the export carries its sources
  tuned, enc = TunedT5(config, (method,)), jnp.asarray(batch[0])
  trained = tuned.adapters({"t5": frozen, "attempt": params}, encoder_input_tokens=enc)
  served = tuned.adapters({"t5": frozen, "attempt": jax.tree.map(jnp.asarray, loaded)}, encoder_input_tokens=enc)
  np.testing.assert_allclose(served["input"]["prompt"], trained["input"]["prompt"], rtol=1e-6)
  settings = DecodingSettings(max_decode_length=4)
  before = decoding.generate(config, frozen, batch[0], adapters=trained, settings=settings).tokens
  after = decoding.generate(config, frozen, batch[0], adapters=served, settings=settings).tokens
  np.testing.assert_array_equal(before, after)
  other = ATTEMPT(3, _attempt_sources(config.emb_dim, count=3), _uniform, projection_dim=4)
  with pytest.raises(SourcesChangedError, match=r"trained with the source prompts \['s0', 's1'\] .*'s2'"):
    other.load(tmp_path, config)  # another config's sources: refused, naming the export's
  with pytest.raises(ValueError, match="gives the methods no input"):
    tuned.adapters({"t5": frozen, "attempt": params})
  # An upload is refused with the reason (not "restart the server with it"), and a server cannot be started with it.
  from prompt_tuning.serve.engine import EngineShapes
  from prompt_tuning.serve.store import make_entry

  limits = Limits(config, {"prompt": 8}, ("prompt",))
  with pytest.raises(PromptError, match="'attempt' is not served: .*from that row's input"):
    make_entry("mixed", "attempt", {"target": np.ones((3, config.emb_dim), np.float32)}, limits, 1, "upload")
  with pytest.raises(ValueError, match="names 'attempt': method 'attempt' is not served"):
    EngineShapes(methods=("prompt", "attempt"))
