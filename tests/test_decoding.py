"""Decoding: cache consistency, beam search, sampling filters, EOS handling."""

import functools

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding
from prompt_tuning.decoding import DecodingSettings


@pytest.fixture(scope="module")
def model():
  # A random tiny T5 1.1. The pad logit is pinned at 0, below the best of the
  # 63 random others, so greedy never emits pad mid-sequence.
  config = pt.get_config("t5_1_0_tiny", vocab_size=64, mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  params = pt.init_params(config, jax.random.key(3))
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"].at[:, 0].set(0.0)
  return config, params


@pytest.fixture(scope="module")
def inputs():
  tokens = np.random.default_rng(0).integers(2, 64, (5, 9))
  tokens[1, 4:] = 0
  tokens[3, 2:] = 0
  return tokens


def test_greedy_scores_equal_teacher_forced_log_probs(model, inputs):
  config, params = model
  out = decoding.generate(config, params, inputs, settings=DecodingSettings(max_decode_length=12))
  assert out.tokens.shape == (5, 12)
  forced = decoding.sequence_log_probs(config, params, inputs, out.tokens)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
  # Teacher-forced argmax reproduces every greedy choice (the cache is right).
  decoder_inputs = jnp.pad(out.tokens[:, :-1], ((0, 0), (1, 0)))
  logits = jitted.apply(pt.T5(config), {"params": params}, inputs, decoder_inputs)
  live = np.cumsum(np.asarray(out.tokens) == 1, axis=1) - (np.asarray(out.tokens) == 1) == 0
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1))[live], np.asarray(out.tokens)[live])


def test_tokens_after_eos_are_padding(model, inputs):
  config, params = model
  # Make EOS likely so some rows stop early.
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"].at[:, 1].add(1.5)
  tokens = np.asarray(decoding.generate(config, params, inputs, settings=DecodingSettings(max_decode_length=12)).tokens)
  ended = False
  for row in tokens:
    hits = np.flatnonzero(row == 1)
    if hits.size:
      ended = True
      assert (row[hits[0] + 1 :] == 0).all()
  assert ended, "no row emitted EOS; the test model needs adjusting"


def test_beam_width_one_equals_greedy(model, inputs):
  config, params = model
  greedy = decoding.generate(config, params, inputs, settings=DecodingSettings(max_decode_length=10))
  beam = decoding.generate(config, params, inputs, settings=DecodingSettings("beam", 10, num_beams=1, alpha=0.0))
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)


def test_beam_search_finds_higher_scoring_sequences_than_greedy(model, inputs):
  config, params = model
  greedy = decoding.generate(config, params, inputs, settings=DecodingSettings(max_decode_length=10))
  beam = decoding.generate(config, params, inputs, settings=DecodingSettings("beam", 10, num_beams=4, alpha=0.0))
  greedy_logp = np.asarray(decoding.sequence_log_probs(config, params, inputs, greedy.tokens))
  beam_logp = np.asarray(decoding.sequence_log_probs(config, params, inputs, beam.tokens))
  # With alpha = 0 a beam's score is its log-probability.
  np.testing.assert_allclose(beam.scores, beam_logp, rtol=1e-4, atol=1e-4)
  assert (beam_logp >= greedy_logp - 1e-4).all()
  assert (beam_logp > greedy_logp + 1e-3).any(), "greedy was optimal everywhere; nothing was tested"


def test_all_beams_are_distinct_and_scored_with_the_length_penalty(model, inputs):
  config, params = model
  settings = DecodingSettings("beam", 8, num_beams=3, alpha=0.6)
  out = decoding.generate(config, params, inputs, settings=settings, return_all_beams=True)
  best = decoding.generate(config, params, inputs, settings=settings)
  assert out.tokens.shape == (5, 3, 8) and out.scores.shape == (5, 3)
  np.testing.assert_array_equal(out.tokens[:, 0], best.tokens)
  tokens = np.asarray(out.tokens).reshape(15, 8)
  logp = np.asarray(decoding.sequence_log_probs(config, params, np.repeat(inputs, 3, axis=0), tokens))
  # A finished beam is scored at its length (EOS included), a live one at the limit.
  lengths = np.array([np.flatnonzero(t == 1)[0] + 1 if (t == 1).any() else 8 for t in tokens], np.float32)
  expected = logp / ((5.0 + lengths) / 6.0) ** 0.6
  np.testing.assert_allclose(np.asarray(out.scores).reshape(15), expected, rtol=1e-4, atol=1e-4)
  for row in np.asarray(out.tokens):
    assert len({tuple(b) for b in row}) == 3


def test_length_penalty_is_t5x_formula():
  assert float(decoding.length_penalty(0.6, jnp.float32(7.0))) == pytest.approx(((5 + 7) / 6) ** 0.6)


def test_sampling_top_k_one_equals_greedy_and_is_reproducible(model, inputs):
  config, params = model
  greedy = decoding.generate(config, params, inputs, settings=DecodingSettings(max_decode_length=8))
  top1 = decoding.generate(
    config, params, inputs, settings=DecodingSettings("sample", 8, top_k=1), rng=jax.random.key(5)
  )
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  settings = DecodingSettings("sample", 8, temperature=1.5)
  a = decoding.generate(config, params, inputs, settings=settings, rng=jax.random.key(7))
  b = decoding.generate(config, params, inputs, settings=settings, rng=jax.random.key(7))
  c = decoding.generate(config, params, inputs, settings=settings, rng=jax.random.key(8))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: np.asarray(x[0] > decoding.NEG_INF / 2)
  np.testing.assert_array_equal(kept(decoding._filter_logits(logits, 2, 1.0)), [True, True, False, False])
  # Nucleus: the smallest set with mass >= p.
  np.testing.assert_array_equal(kept(decoding._filter_logits(logits, 0, 0.7)), [True, True, False, False])
  np.testing.assert_array_equal(kept(decoding._filter_logits(logits, 0, 0.5)), [True, False, False, False])
  np.testing.assert_array_equal(kept(decoding._filter_logits(logits, 0, 0.9)), [True, True, True, False])


def test_sampled_tokens_stay_inside_top_k(model, inputs):
  config, params = model
  out = decoding.generate(
    config, params, inputs, settings=DecodingSettings("sample", 1, top_k=3), rng=jax.random.key(0)
  )
  logits = jitted.apply(pt.T5(config), {"params": params}, inputs, jnp.zeros((5, 1), jnp.int32))[:, 0]
  top3 = np.asarray(jax.lax.top_k(logits, 3)[1])
  assert all(tok in row for tok, row in zip(np.asarray(out.tokens)[:, 0], top3))


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="Unknown decoding method"):
    DecodingSettings(method="nucleus")
  with pytest.raises(ValueError, match="top_p"):
    DecodingSettings(method="sample", top_p=0.0)


def _cross_attention_scales(config, rng, rows=None):
  """Random IA3 key/value scales of the decoder's cross-attention (a site applied before the cache)."""
  shape = (config.num_decoder_layers,) + (() if rows is None else (rows,)) + (config.num_heads * config.head_dim,)
  k1, k2 = jax.random.split(rng)
  scales = {"key_scale": jax.random.uniform(k1, shape, minval=0.2, maxval=3.0)}
  scales["value_scale"] = jax.random.uniform(k2, shape, minval=0.2, maxval=3.0)
  return {"decoder": {"cross_attention": scales}}


def test_init_cache_takes_adapters_applied_before_the_cache(model, inputs):
  """Cross-attention's cached keys/values are made once by init_cache: a site that changes them (IA3's scales,
  per row here) must be applied there, and a decode step through that cache equals teacher forcing."""
  config, params = model
  t5 = pt.T5(config)
  adapters = _cross_attention_scales(config, jax.random.key(4), rows=len(inputs))
  encoded, mask = jitted.apply(t5, {"params": params}, inputs, adapters, method=pt.T5.encode)

  def first_step(cache_adapters):
    _, variables = jitted.apply(
      t5, {"params": params}, encoded, mask, len(inputs), 4, cache_adapters, method=pt.T5.init_cache, mutable=["cache"]
    )
    logits, _ = jitted.apply(
      t5,
      {"params": params, "cache": variables["cache"]},
      None,
      mask,
      jnp.zeros((len(inputs), 1), jnp.int32),
      adapters=adapters,
      decode_position=0,
      method=pt.T5.decode,
      mutable=["cache"],
    )
    return logits[:, 0], variables["cache"]

  logits, cache = first_step(adapters)
  forced = jitted.apply(t5, {"params": params}, inputs, jnp.zeros((len(inputs), 1), jnp.int32), adapters=adapters)[:, 0]
  np.testing.assert_allclose(logits, forced, rtol=1e-5, atol=1e-5)
  # The cached keys are the scaled ones (scaled once: a decode step does not scale them again).
  _, plain_cache = first_step(None)
  cached = cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"]  # [B, H, Te, Dh]: heads first
  plain = plain_cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"]
  heads, head_dim = cached.shape[1], cached.shape[3]
  scale = adapters["decoder"]["cross_attention"]["key_scale"][0].reshape(len(inputs), heads, 1, head_dim)
  np.testing.assert_allclose(cached, plain * scale, rtol=1e-6)
  stale, _ = first_step(None)  # a cache made without the adapters is the frozen model's: other logits
  assert not np.allclose(stale, forced, atol=1e-3)


def test_greedy_decoding_with_cross_attention_scales_equals_teacher_forcing(model, inputs):
  config, params = model
  adapters = _cross_attention_scales(config, jax.random.key(5))
  out = decoding.generate(config, params, inputs, adapters=adapters, settings=DecodingSettings(max_decode_length=8))
  forced = decoding.sequence_log_probs(config, params, inputs, out.tokens, adapters=adapters)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)


def test_rows_at_different_positions_in_one_step_equal_each_row_alone(model, inputs):
  """The server's continuous batching: one batched decode step with a position per row (each row writes its own
  cache slot, sees only its own earlier positions, and ignores stale keys beyond them) gives each row what it gets
  decoded alone at its position, and what teacher forcing gives. With cache_rows, a batch of some of the cache's rows
  (in any order, with a padding row) gets those rows' logits and cache, and the other rows' cache is left as it was.
  """
  config, params = model
  t5, rows, length = pt.T5(config), len(inputs), 6
  sequences = np.random.default_rng(1).integers(2, 64, (rows, length)).astype(np.int32)

  @jax.jit
  def start(tokens):
    encoded, mask = t5.apply({"params": params}, tokens, method=pt.T5.encode)
    init = functools.partial(t5.apply, method=pt.T5.init_cache, mutable=["cache"])
    return mask, init({"params": params}, encoded, mask, rows, length)[1]["cache"]

  mask, cache = start(inputs)

  @jax.jit
  def step(cache, tokens, position, row_mask=mask, cache_rows=None):
    logits, mutated = t5.apply(
      {"params": params, "cache": cache},
      None,
      row_mask,
      tokens,
      decode_position=position,
      cache_rows=cache_rows,
      method=pt.T5.decode,
      mutable=["cache"],
    )
    return logits[:, 0], mutated["cache"]

  for i in range(length):  # every slot filled: those beyond a row's position below hold stale keys
    _, cache = step(cache, sequences[:, i : i + 1], i)
  positions = np.array([0, 3, 5, 1, 2], np.int32)
  fed = np.array([[7], [11], [13], [17], [19]], np.int32)  # not the tokens whose keys sit at those slots
  logits, stepped = step(cache, fed, positions)

  for b in range(rows):
    alone = jax.tree.map(lambda x, b=b: x[b : b + 1], cache)
    row_logits, row_cache = step(alone, fed[b : b + 1], positions[b], mask[b : b + 1])
    np.testing.assert_allclose(logits[b], row_logits[0], rtol=1e-6, atol=1e-6)
    for mixed, single in zip(jax.tree.leaves(stepped), jax.tree.leaves(row_cache)):
      np.testing.assert_allclose(mixed[b], single[0], rtol=1e-6, atol=1e-6)
  # Teacher forcing, every row at once: a row's earlier tokens, then the fed one at its position (causal: what
  # follows it changes nothing).
  decoder_inputs = sequences.copy()
  decoder_inputs[np.arange(rows), positions] = fed[:, 0]
  forced = jax.jit(t5.apply)({"params": params}, inputs, decoder_inputs)[np.arange(rows), positions]
  np.testing.assert_allclose(logits, forced, rtol=1e-5, atol=1e-5)

  chosen = np.array([3, 0, rows], np.int32)  # rows 3 and 0 of the cache, then a padding row (past the cache)
  real, untouched = chosen[:2], np.array([1, 2, 4])
  pad = lambda x: np.concatenate([x[real], x[:1]])  # noqa: E731 - the padding row's inputs: any
  some, some_cache = step(cache, pad(fed), pad(positions), pad(np.asarray(mask)), chosen)
  np.testing.assert_allclose(some[:2], logits[real], rtol=1e-6, atol=1e-6)
  for got, want, old in zip(jax.tree.leaves(some_cache), jax.tree.leaves(stepped), jax.tree.leaves(cache)):
    np.testing.assert_allclose(got[real], want[real], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[untouched], old[untouched])
  with pytest.raises(ValueError, match="decode_position per row"):
    step(cache, fed, 0, mask, np.arange(rows, dtype=np.int32))
