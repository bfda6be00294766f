"""Decoding with every prompt combination: decoder-only (prefilled cache) and encoder-decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import combine, decoding
from prompt_tuning.decoding import DecodingSettings


def _pin_pad(params):
  # The pad logit pinned at 0, below the best of the random others, so greedy never emits pad mid-sequence.
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"].at[:, 0].set(0.0)
  return params


@pytest.fixture(scope="module")
def decoder_only():
  config = pt.get_config("decoder_only_tiny", vocab_size=64)
  return config, _pin_pad(pt.init_params(config, jax.random.key(0)))


@pytest.fixture(scope="module")
def inputs():
  x = np.random.default_rng(0).integers(2, 64, (3, 6))
  x[0, 5] = 1  # ends with EOS
  x[1, 2], x[1, 3:] = 1, 0  # short, ends with EOS
  return x  # row 2: no EOS


@pytest.mark.parametrize("mode", combine.MODES)
def test_decoder_only_greedy_scores_equal_teacher_forced_log_probs(decoder_only, inputs, mode):
  config, params = decoder_only
  prompt = jax.random.normal(jax.random.key(1), (3, 4, config.emb_dim))
  lengths = np.array([4, 2, 0])  # rows with a long, a short and no prompt
  kwargs = dict(decoder_prompt_tokens=inputs, prompt=prompt, prompt_combination=mode, prompt_lengths=lengths)
  out = decoding.generate(config, params, settings=DecodingSettings(max_decode_length=7), **kwargs)
  forced = decoding.sequence_log_probs(config, params, None, out.tokens, **kwargs)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
  assert len({tuple(row) for row in np.asarray(out.tokens)}) == 3, "rows decoded alike; nothing was tested"


def test_decoder_only_rows_decode_as_they_would_alone(decoder_only, inputs):
  config, params = decoder_only
  prompt = jax.random.normal(jax.random.key(2), (3, config.emb_dim))
  settings = DecodingSettings(max_decode_length=6)
  batch = decoding.generate(config, params, decoder_prompt_tokens=inputs, prompt=prompt, settings=settings)
  alone = decoding.generate(config, params, decoder_prompt_tokens=inputs[1:2, :3], prompt=prompt, settings=settings)
  np.testing.assert_array_equal(batch.tokens[1], alone.tokens[0])
  np.testing.assert_allclose(batch.scores[1], alone.scores[0], rtol=1e-5, atol=1e-5)


def test_decoder_only_beam_search_and_prefix(decoder_only, inputs):
  config, params = decoder_only
  shape = (config.num_decoder_layers, 2, config.num_heads, config.head_dim)
  keys = jax.random.split(jax.random.key(3), 2)
  prefix = {"decoder": {"key": jax.random.normal(keys[0], shape), "value": jax.random.normal(keys[1], shape)}}
  settings = DecodingSettings("beam", 5, num_beams=3, alpha=0.0)
  out = decoding.generate(config, params, decoder_prompt_tokens=inputs, prefix=prefix, settings=settings)
  forced = decoding.sequence_log_probs(config, params, None, out.tokens, decoder_prompt_tokens=inputs, prefix=prefix)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)  # alpha = 0: the score is the log-prob
  greedy = decoding.generate(
    config, params, decoder_prompt_tokens=inputs, prefix=prefix, settings=DecodingSettings(max_decode_length=5)
  )
  greedy_logp = decoding.sequence_log_probs(
    config, params, None, greedy.tokens, decoder_prompt_tokens=inputs, prefix=prefix
  )
  assert (np.asarray(forced) >= np.asarray(greedy_logp) - 1e-4).all()


def test_inputs_through_the_wrong_argument_are_refused(decoder_only, inputs):
  config, params = decoder_only
  with pytest.raises(ValueError, match="decoder_prompt_tokens"):
    decoding.generate(config, params, inputs)
  encdec = pt.get_config("t5_1_0_tiny")
  with pytest.raises(ValueError, match="encoder_input_tokens"):
    decoding.generate(encdec, None, decoder_prompt_tokens=inputs)
  with pytest.raises(ValueError, match="Unknown prompt combination"):
    decoding.generate(config, params, decoder_prompt_tokens=inputs, prompt_combination="infix")


def test_encoder_decoder_suffix_prompt_decoding_matches_teacher_forcing(inputs):
  config = pt.get_config("t5_1_0_tiny", vocab_size=64, mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  params = _pin_pad(pt.init_params(config, jax.random.key(4)))
  prompt = jax.random.normal(jax.random.key(5), (3, 5, config.emb_dim))
  kwargs = dict(prompt=prompt, prompt_combination="suffix", prompt_lengths=jnp.array([5, 1, 3]))
  out = decoding.generate(config, params, inputs, settings=DecodingSettings(max_decode_length=6), **kwargs)
  forced = decoding.sequence_log_probs(config, params, inputs, out.tokens, **kwargs)
  np.testing.assert_allclose(out.scores, forced, rtol=1e-4, atol=1e-4)
