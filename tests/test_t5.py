"""The T5 module itself: sizes, parameter tree, masks, prompts, prefixes, decoder-only, dtype, remat."""

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning.models import configs


def _count(config):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(pt.param_shapes(config)))


# Parameter counts of the public checkpoints (t5-small ... t5-11b,
# google/t5-v1_1-*, google/mt5-*): the named sizes are the published ones.
@pytest.mark.parametrize(
  "name,count",
  [
    ("t5_1_0_small", 60_506_624),
    ("t5_1_0_base", 222_903_552),
    ("t5_1_0_large", 737_668_096),
    ("t5_1_0_xl", 2_851_598_336),
    ("t5_1_0_xxl", 11_307_321_344),
    ("t5_1_1_small", 76_961_152),
    ("t5_1_1_base", 247_577_856),
    ("t5_1_1_large", 783_150_080),
    ("t5_1_1_xl", 2_849_757_184),
    ("t5_1_1_xxl", 11_135_332_352),
    ("mt5_small", 300_176_768),
  ],
)
def test_named_sizes_have_published_parameter_counts(name, count):
  assert _count(pt.get_config(name)) == count


def test_unknown_size_suggests_close_names():
  with pytest.raises(ValueError, match="t5_1_1_base"):
    pt.get_config("t5_1_1_bse")


def test_bad_config_values_are_rejected():
  with pytest.raises(ValueError, match="mlp_activations|activation"):
    pt.get_config("t5_1_1_tiny", mlp_activations=("swish2",))
  with pytest.raises(ValueError, match="dtype"):
    pt.get_config("t5_1_1_tiny", dtype="float33")
  with pytest.raises(ValueError, match="feed_forward_proj"):
    configs.activations_from_feed_forward_proj("gated-tanh")


def test_parameter_tree_uses_t5x_names_and_logical_axes():
  config = pt.get_config("t5_1_1_tiny")
  axes = pt.param_logical_axes(config)
  assert tuple(axes["token_embedder"]["embedding"]) == ("vocab", "embed")
  assert tuple(axes["encoder"]["layers_0"]["attention"]["query"]["kernel"]) == ("embed", "joined_kv")
  assert tuple(axes["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
  assert tuple(axes["decoder"]["layers_1"]["encoder_decoder_attention"]["out"]["kernel"]) == ("joined_kv", "embed")
  assert tuple(axes["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")
  assert tuple(axes["encoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
  assert tuple(axes["decoder"]["decoder_norm"]["scale"]) == ("embed",)
  # Every parameter is named (nothing left unsharded by accident).
  for spec in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert all(name is not None for name in spec)


@pytest.fixture(scope="module")
def tiny():
  config = pt.get_config("t5_1_0_tiny")
  return config, pt.init_params(config, jax.random.key(0))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 128, (3, 7))
  enc[1, 4:] = 0
  targets = rng.integers(2, 128, (3, 5))
  targets[2, 3:] = 0
  dec = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  return enc, dec, targets


def test_padding_does_not_change_real_positions(tiny):
  config, params = tiny
  enc, dec, targets = _batch()
  model = pt.T5(config)
  logits = jitted.apply(model, {"params": params}, enc, dec, targets)
  # Row 1 with its padding cut off gives the same logits.
  alone = jitted.apply(model, {"params": params}, enc[1:2, :4], dec[1:2], targets[1:2])
  np.testing.assert_allclose(logits[1], alone[0], rtol=1e-5, atol=1e-5)
  # Row 2's real decoder positions ignore what follows them.
  cut = jitted.apply(model, {"params": params}, enc[2:3], dec[2:3, :3], targets[2:3, :3])
  np.testing.assert_allclose(logits[2, :3], cut[0], rtol=1e-5, atol=1e-5)


def test_prompt_shapes_and_errors(tiny):
  config, params = tiny
  enc, dec, targets = _batch()
  model = pt.T5(config)
  prompt = jax.random.normal(jax.random.key(1), (4, config.emb_dim))
  shared = jitted.apply(model, {"params": params}, enc, dec, targets, prompt=prompt)
  per_row = jitted.apply(
    model, {"params": params}, enc, dec, targets, prompt=jnp.broadcast_to(prompt, (3, 4, config.emb_dim))
  )
  np.testing.assert_allclose(shared, per_row, rtol=1e-6)
  encoded, mask = jitted.apply(model, {"params": params}, enc, prompt=prompt, method=pt.T5.encode)
  assert encoded.shape == (3, 4 + 7, config.emb_dim) and bool(mask[:, :4].all())
  with pytest.raises(ValueError, match=r"expected \[P, 16\]"):
    jitted.apply(model, {"params": params}, enc, dec, prompt=jnp.zeros((4, 8)))
  with pytest.raises(ValueError, match="per row"):
    jitted.apply(model, {"params": params}, enc, dec, prompt=jnp.zeros((2, 4, 16)))


def _prefix(config, key, length=3, batch=None, sites=("encoder", "decoder", "cross")):
  out = {}
  for i, site in enumerate(sites):
    layers = config.num_encoder_layers if site == "encoder" else config.num_decoder_layers
    shape = (layers,) + ((batch,) if batch else ()) + (length, config.num_heads, config.head_dim)
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    out[site] = {"key": jax.random.normal(k1, shape), "value": jax.random.normal(k2, shape)}
  return out


def test_prefix_sites_change_only_what_they_reach(tiny):
  config, params = tiny
  enc, dec, targets = _batch()
  model = pt.T5(config)
  base_encoded, _ = jitted.apply(model, {"params": params}, enc, method=pt.T5.encode)
  base = jitted.apply(model, {"params": params}, enc, dec, targets)
  prefix = _prefix(config, jax.random.key(2))
  for site in ("encoder", "decoder", "cross"):
    one = {site: prefix[site]}
    encoded, _ = jitted.apply(model, {"params": params}, enc, prefix=one, method=pt.T5.encode)
    logits = jitted.apply(model, {"params": params}, enc, dec, targets, prefix=one)
    assert not np.allclose(logits, base, atol=1e-4), site
    # Only the encoder prefix reaches the encoder output.
    assert np.allclose(encoded, base_encoded, atol=1e-6) == (site != "encoder"), site


def test_per_row_prefix_equals_rows_run_alone(tiny):
  config, params = tiny
  enc, dec, targets = _batch()
  model = pt.T5(config)
  prefix = _prefix(config, jax.random.key(3), batch=3)
  logits = jitted.apply(model, {"params": params}, enc, dec, targets, prefix=prefix)
  for row in range(3):
    alone = jax.tree.map(lambda x, r=row: x[:, r], prefix)
    ref = jitted.apply(
      model, {"params": params}, enc[row : row + 1], dec[row : row + 1], targets[row : row + 1], prefix=alone
    )
    np.testing.assert_allclose(logits[row], ref[0], rtol=1e-5, atol=1e-5)


def test_bad_prefix_shape_is_explained(tiny):
  config, params = tiny
  enc, dec, _ = _batch()
  bad = {"encoder": {"key": jnp.zeros((1, 3, 2, 8)), "value": jnp.zeros((1, 3, 2, 8))}}
  with pytest.raises(ValueError, match="expected \\[2, P, 2, 8\\]"):
    jitted.apply(pt.T5(config), {"params": params}, enc, dec, prefix=bad)
  with pytest.raises(ValueError, match="Unknown prefix sites"):
    jitted.apply(pt.T5(config), {"params": params}, enc, dec, prefix={"attention": bad["encoder"]})


def test_remat_and_bfloat16(tiny):
  config, params = tiny
  enc, dec, targets = _batch()
  ref = jitted.apply(pt.T5(config), {"params": params}, enc, dec, targets)

  def loss(p, cfg):
    return jnp.mean(pt.T5(cfg).apply({"params": p}, enc, dec, targets) ** 2)

  remat = config.replace(remat=True)
  np.testing.assert_allclose(
    jitted.apply(pt.T5(remat), {"params": params}, enc, dec, targets), ref, rtol=1e-5, atol=1e-5
  )
  gradient = jax.jit(jax.grad(loss), static_argnums=1)
  g_ref, g_remat = gradient(params, config), gradient(params, remat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_ref, g_remat)
  bf16 = jitted.apply(pt.T5(config.replace(dtype="bfloat16")), {"params": params}, enc, dec, targets)
  assert bf16.dtype == jnp.float32  # logits always float32
  assert np.abs(bf16 - ref).max() / np.abs(ref).max() < 0.05


def test_dropout_is_active_only_when_enabled(tiny):
  config, params = tiny
  config = config.replace(dropout_rate=0.3)
  enc, dec, targets = _batch()
  model = pt.T5(config)
  a = jitted.apply(model, {"params": params}, enc, dec, targets)
  b = jitted.apply(model, {"params": params}, enc, dec, targets)
  np.testing.assert_array_equal(a, b)
  c = jitted.apply(
    model, {"params": params}, enc, dec, targets, enable_dropout=True, rngs={"dropout": jax.random.key(0)}
  )
  assert not np.allclose(a, c)


def test_decoder_only_prefix_lm():
  config = pt.get_config("decoder_only_tiny")
  params = pt.init_params(config, jax.random.key(0))
  model = pt.T5(config)
  tokens = np.random.default_rng(0).integers(2, 128, (2, 8))
  targets = tokens.copy()
  inputs_part = np.zeros((2, 8), int)
  inputs_part[:, :4] = 1  # the first 4 positions are the (fully visible) inputs
  causal = jitted.apply(model, {"params": params}, None, tokens, targets)
  prefix_lm = jitted.apply(model, {"params": params}, None, tokens, targets, decoder_causal_attention=inputs_part)
  assert causal.shape == (2, 8, 128)
  # Inputs see each other in a prefix LM, so early positions change...
  assert not np.allclose(causal[:, :3], prefix_lm[:, :3])
  # ...and a causal LM's position t ignores later tokens.
  changed = tokens.copy()
  changed[:, 6] = 5
  again = jitted.apply(model, {"params": params}, None, changed, changed)
  np.testing.assert_allclose(again[:, :6], causal[:, :6], rtol=1e-5, atol=1e-6)
  prompt = jax.random.normal(jax.random.key(1), (3, config.emb_dim))
  with_prompt = jitted.apply(model, {"params": params}, None, tokens, targets, prompt=prompt)
  assert with_prompt.shape == (2, 8, 128) and not np.allclose(with_prompt, causal)
  with pytest.raises(ValueError, match="decoder-only"):
    jitted.apply(model, {"params": params}, tokens, tokens)


def test_a_decoder_only_model_has_no_encoder_length_to_check():
  """`T5Config.encoder_depth` is what callers ask instead of branching on decoder_only: 0 without an encoder, where
  MAX_ENCODER_LENGTH does not apply."""
  from prompt_tuning import prompts
  from prompt_tuning.methods import Prompt
  from prompt_tuning.tuning import TunedT5

  prompt = Prompt(4, prompts.random_uniform())
  decoder_only, encoder_decoder = pt.get_config("decoder_only_tiny"), pt.get_config("t5_1_1_tiny")
  assert decoder_only.encoder_depth == 0
  assert encoder_decoder.encoder_depth == encoder_decoder.num_encoder_layers > 0
  lengths = {"inputs": 8, "targets": 4}
  TunedT5(decoder_only, (prompt,)).check_lengths(lengths, max_encoder_length=8)
  with pytest.raises(ValueError, match=r"prompt length 4 \+ input 8 exceeds max 8"):
    TunedT5(encoder_decoder, (prompt,)).check_lengths(lengths, max_encoder_length=8)
