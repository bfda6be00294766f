"""Prefix tuning: the MLP reparameterization, folding, sites, decoding, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding
from prompt_tuning.methods import prefix as prefixes
from prompt_tuning.methods.prefix import PrefixSettings

SETTINGS = PrefixSettings(length=3, mlp_width=16)


@functools.cache
def _apply(config):
  def apply(params, enc, dec, targets, prefix, prompt=None):
    return pt.T5(config).apply({"params": params}, enc, dec, targets, prefix=prefix, prompt=prompt)

  return jax.jit(apply)


@functools.cache
def _encode(config):
  return jax.jit(
    lambda params, enc, prefix: pt.T5(config).apply({"params": params}, enc, prefix=prefix, method=pt.T5.encode)[0]
  )


def test_settings_are_validated():
  assert PrefixSettings(4, sites=["decoder", "cross"]).sites == ("decoder", "cross")
  with pytest.raises(ValueError, match="give each of"):
    PrefixSettings(4, sites=("encoder", "self"))
  with pytest.raises(ValueError, match="give each of"):
    PrefixSettings(4, sites=("cross", "cross"))
  with pytest.raises(ValueError, match="length must be >= 1"):
    PrefixSettings(0)


def test_reparameterized_tree_and_materialized_shapes(tiny_decoder_model):
  config, _ = tiny_decoder_model
  params = prefixes.init_prefix(jax.random.key(1), SETTINGS, config)
  assert params["embedding"].shape == (3, config.emb_dim)
  assert set(params["mlp"]) == {"encoder", "decoder", "cross"}
  mlp = params["mlp"]["encoder"]
  assert mlp["hidden"]["kernel"].shape == (config.emb_dim, 16)
  assert mlp["output"]["kernel"].shape == (16, config.num_encoder_layers * 2 * config.num_heads * config.head_dim)
  prefix = prefixes.materialize(params, SETTINGS, config)
  for site in ("encoder", "decoder", "cross"):
    assert prefix[site]["key"].shape == (2, 3, config.num_heads, config.head_dim)
    assert not np.allclose(prefix[site]["key"], prefix[site]["value"])
  direct = prefixes.init_prefix(jax.random.key(1), PrefixSettings(3, mlp_width=16, reparameterize=False), config)
  assert prefixes.is_folded(direct) and set(direct) == {"encoder", "decoder", "cross"}
  jax.tree.map(np.testing.assert_array_equal, direct, prefix)


def test_folded_equals_unfolded(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  params = prefixes.init_prefix(jax.random.key(2), SETTINGS, config)
  folded = prefixes.fold(params, SETTINGS, config)
  assert jax.tree.structure(folded) == jax.tree.structure(prefixes.materialize(params, SETTINGS, config))
  jax.tree.map(np.testing.assert_array_equal, prefixes.materialize(folded, SETTINGS, config), folded)
  jax.tree.map(np.testing.assert_array_equal, prefixes.fold(folded, SETTINGS, config), folded)
  logits = _apply(config)(frozen, *batch, prefixes.materialize(params, SETTINGS, config))
  np.testing.assert_array_equal(logits, _apply(config)(frozen, *batch, prefixes.materialize(folded, SETTINGS, config)))


def test_materialize_refuses_trees_of_other_settings(tiny_decoder_model):
  config, _ = tiny_decoder_model
  params = prefixes.init_prefix(jax.random.key(3), SETTINGS, config)
  with pytest.raises(ValueError, match="MLPs are for sites"):
    prefixes.materialize(params, PrefixSettings(3, sites=("decoder",), mlp_width=16), config)
  with pytest.raises(ValueError, match=r"expected \(4, 16\)"):
    prefixes.materialize(params, PrefixSettings(4, mlp_width=16), config)
  folded = prefixes.fold(params, SETTINGS, config)
  with pytest.raises(ValueError, match=r"expected \(2, 5, 2, 8\)"):
    prefixes.materialize(folded, PrefixSettings(5, mlp_width=16), config)
  with pytest.raises(ValueError, match="sites=\\('decoder',\\)"):
    prefixes.init_prefix(jax.random.key(0), SETTINGS, pt.get_config("decoder_only_tiny"))


def _switched(prefix, on):
  """The same prefix arrays with only the sites in `on` switched on (by their masks)."""
  return {site: {**kv, "mask": jnp.full((3,), site in on)} for site, kv in prefix.items()}


def test_each_site_changes_only_what_it_reaches(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  enc, dec, targets = batch
  full = prefixes.materialize(prefixes.init_prefix(jax.random.key(4), SETTINGS, config), SETTINGS, config)
  # Every site switched off is no prefix at all.
  base_logits = _apply(config)(frozen, enc, dec, targets, None)
  np.testing.assert_allclose(_apply(config)(frozen, enc, dec, targets, _switched(full, ())), base_logits, atol=1e-5)
  base_encoded = _encode(config)(frozen, enc, _switched(full, ()))
  for site in ("encoder", "decoder", "cross"):
    only = _switched(full, (site,))
    # Only the encoder site reaches the encoder output; every site reaches the logits.
    assert np.allclose(_encode(config)(frozen, enc, only), base_encoded, atol=1e-6) == (site != "encoder"), site
    assert not np.allclose(_apply(config)(frozen, enc, dec, targets, only), base_logits, atol=1e-4), site
  # Settings with fewer sites materialize only those.
  fewer = PrefixSettings(3, sites=("cross",), mlp_width=16)
  assert set(prefixes.materialize(prefixes.init_prefix(jax.random.key(5), fewer, config), fewer, config)) == {"cross"}


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_decoding_with_prefixes_equals_teacher_forced_scoring(tiny_decoder_model, batch, method):
  config, frozen = tiny_decoder_model
  enc = batch[0]
  prefix = prefixes.materialize(prefixes.init_prefix(jax.random.key(6), SETTINGS, config), SETTINGS, config)
  settings = decoding.DecodingSettings(method, 6, num_beams=3, alpha=0.0)
  out = decoding.generate(config, frozen, enc, prefix=prefix, settings=settings)
  forced = decoding.sequence_log_probs(config, frozen, enc, out.tokens, prefix=prefix)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
  assert len({tuple(row) for row in np.asarray(out.tokens)}) == 3, "rows decoded alike; nothing was tested"


def test_gradients_reach_only_the_trainable_vectors(tiny_decoder_model, batch):
  config, frozen = tiny_decoder_model
  enc, dec, targets = batch
  trainable = {
    "prompt": jax.random.normal(jax.random.key(7), (2, config.emb_dim)),
    "prefix": prefixes.init_prefix(jax.random.key(8), SETTINGS, config),
  }

  def loss(trainable, frozen):
    prefix = prefixes.materialize(trainable["prefix"], SETTINGS, config)
    logits = pt.T5(config).apply({"params": frozen}, enc, dec, targets, prompt=trainable["prompt"], prefix=prefix)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(targets > 0, logp, 0.0))

  grads = jax.jit(jax.grad(loss))(trainable, frozen)  # argnums=0: the trainable tree only
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
  # Through the MLP: a small step against the gradient lowers the loss, a step along it raises it.
  norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
  step = jax.tree.map(lambda g: 1e-2 * g / norm, grads)
  lower, higher = (jax.tree.map(lambda x, s, sign=sign: x + sign * s, trainable, step) for sign in (-1, 1))
  assert float(loss(lower, frozen)) < float(loss(trainable, frozen)) < float(loss(higher, frozen))
