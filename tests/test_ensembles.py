"""Mixed batches (each row its own prompt and/or prefix) and prompt ensembles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding, ensembles
from prompt_tuning.decoding import DecodingSettings
from prompt_tuning.methods import prefix as prefixes


@pytest.fixture(scope="module")
def rows(tiny_decoder_model):
  """Four rows: a prompt only, a prefix only, both, neither (lengths and sites differ)."""
  config, _ = tiny_decoder_model
  full = prefixes.PrefixSettings(3, mlp_width=16)
  decoder_only = prefixes.PrefixSettings(2, sites=("decoder", "cross"), mlp_width=16)
  prefix_a = prefixes.fold(prefixes.init_prefix(jax.random.key(1), full, config), full, config)
  prefix_b = prefixes.fold(prefixes.init_prefix(jax.random.key(2), decoder_only, config), decoder_only, config)
  prompt_a = jax.random.normal(jax.random.key(3), (4, config.emb_dim))
  prompt_c = jax.random.normal(jax.random.key(4), (2, config.emb_dim))
  return [(prompt_a, None), (None, prefix_a), (prompt_c, prefix_b), (None, None)]


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 64, (4, 7))
  enc[:, 6], enc[1, 4], enc[1, 5:] = 1, 1, 0
  targets = rng.integers(2, 64, (4, 5))
  targets[2, 3:] = 0
  return enc, np.pad(targets[:, :-1], ((0, 0), (1, 0))), targets


def test_stacking_pads_and_masks():
  prompt, lengths = ensembles.stack_prompts([jnp.ones((3, 2)), None, jnp.ones((1, 2))])
  assert prompt.shape == (3, 3, 2) and list(lengths) == [3, 0, 1]
  with pytest.raises(ValueError, match="one width D"):
    ensembles.stack_prompts([jnp.ones((3, 2)), jnp.ones((3, 4))])
  kv = {"key": jnp.ones((2, 3, 1, 1)), "value": jnp.ones((2, 3, 1, 1))}
  stacked = ensembles.stack_prefixes([{"decoder": kv}, None])
  assert stacked["decoder"]["key"].shape == (2, 2, 3, 1, 1)
  np.testing.assert_array_equal(stacked["decoder"]["mask"], [[1, 1, 1], [0, 0, 0]])


@functools.cache
def _apply(config, mode):
  def apply(params, enc, dec, targets, prompt, prompt_lengths, prefix):
    return pt.T5(config).apply(
      {"params": params},
      enc,
      dec,
      targets,
      prompt=prompt,
      prompt_lengths=prompt_lengths,
      prefix=prefix,
      prompt_combination=mode,
    )

  return jax.jit(apply)


@pytest.mark.parametrize("mode", ["prefix", "suffix"])
def test_mixed_prompt_and_prefix_rows_equal_each_row_alone(tiny_decoder_model, rows, batch, mode):
  config, params = tiny_decoder_model
  enc, dec, targets = batch
  prompt, lengths = ensembles.stack_prompts([p for p, _ in rows])
  prefix = ensembles.stack_prefixes([x for _, x in rows])
  mixed = _apply(config, mode)(params, enc, dec, targets, prompt, lengths, prefix)
  for b, (row_prompt, row_prefix) in enumerate(rows):
    one = slice(b, b + 1)
    alone = _apply(config, mode)(params, enc[one], dec[one], targets[one], row_prompt, None, row_prefix)
    real = targets[b] > 0
    np.testing.assert_allclose(mixed[b][real], alone[0][real], rtol=1e-5, atol=1e-5)


def test_mixed_batch_decodes_each_row_as_alone(tiny_decoder_model, rows, batch):
  config, params = tiny_decoder_model
  enc = batch[0]
  prompt, lengths = ensembles.stack_prompts([p for p, _ in rows])
  prefix = ensembles.stack_prefixes([x for _, x in rows])
  settings = DecodingSettings("beam", 6, num_beams=2)
  mixed = decoding.generate(
    config, params, enc, prompt=prompt, prompt_lengths=lengths, prefix=prefix, settings=settings
  )
  for b in (2, 3):  # prompt and prefix; neither
    row_prompt, row_prefix = rows[b]
    alone = decoding.generate(config, params, enc[b : b + 1], prompt=row_prompt, prefix=row_prefix, settings=settings)
    np.testing.assert_array_equal(mixed.tokens[b], alone.tokens[0])
    np.testing.assert_allclose(mixed.scores[b], alone.scores[0], rtol=1e-5, atol=1e-5)


def test_majority_vote_on_a_constructed_case():
  a, b, c = [5, 1, 0], [6, 7, 1], [5, 2, 1]
  tokens = jnp.array([[a, b, a, c], [b, c, c, b], [a, b, c, [8, 1, 0]]])
  winner, votes = ensembles.majority_vote(tokens)
  np.testing.assert_array_equal(winner, [a, b, a])  # a twice; b-c tie goes to the first prompt; all differ
  np.testing.assert_array_equal(votes, [2, 2, 1])


def test_mean_log_prob_lets_one_confident_prompt_outvote_hesitant_ones():
  # Prompt 0 is sure of candidate 0; prompts 1 and 2 lean slightly to candidate 1.
  logp = jnp.log(jnp.array([[[0.95, 0.05], [0.45, 0.55], [0.45, 0.55]]]))
  choice, mean = ensembles.mean_log_prob_choice(logp)
  assert int(choice[0]) == 0
  np.testing.assert_allclose(mean[0], np.log([[0.95 * 0.45 * 0.45, 0.05 * 0.55 * 0.55]]).ravel() / 3, rtol=1e-5)
  per_prompt_votes = jnp.argmax(logp, axis=-1)[0]
  assert int(jnp.sum(per_prompt_votes == 1)) == 2  # a vote would pick candidate 1


def test_ensemble_generate_and_classify_equal_one_prompt_at_a_time(tiny_decoder_model, batch):
  config, params = tiny_decoder_model
  enc = batch[0][:2]
  prompts = jax.random.normal(jax.random.key(9), (3, 2, config.emb_dim))
  settings = DecodingSettings(max_decode_length=5)
  out = ensembles.ensemble_generate(config, params, enc, prompts, settings=settings)
  assert out.all_tokens.shape == (2, 3, 5)
  for k in range(3):
    single = decoding.generate(config, params, enc, prompt=prompts[k], settings=settings)
    np.testing.assert_array_equal(out.all_tokens[:, k], single.tokens)
    np.testing.assert_allclose(out.all_scores[:, k], single.scores, rtol=1e-5, atol=1e-5)
  winner, votes = ensembles.majority_vote(out.all_tokens)
  np.testing.assert_array_equal(out.tokens, winner)
  np.testing.assert_array_equal(out.votes, votes)
  candidates = np.array([[7, 1, 0], [9, 11, 1]])
  logp = ensembles.candidate_log_probs(config, params, enc, candidates, prompts)
  assert logp.shape == (2, 3, 2)
  for k in range(3):
    for c in range(2):
      expected = decoding.sequence_log_probs(config, params, enc, np.tile(candidates[c], (2, 1)), prompt=prompts[k])
      np.testing.assert_allclose(logp[:, k, c], expected, rtol=1e-5, atol=1e-5)
  choice, mean = ensembles.ensemble_classify(config, params, enc, candidates, prompts)
  np.testing.assert_array_equal(choice, jnp.argmax(logp.mean(axis=1), axis=-1))


def test_decoder_only_ensembles():
  config = pt.get_config("decoder_only_tiny", vocab_size=64)
  params = pt.init_params(config, jax.random.key(5))
  inputs = np.array([[5, 6, 1], [7, 1, 0]])
  prompts = jax.random.normal(jax.random.key(6), (2, 3, config.emb_dim))
  out = ensembles.ensemble_generate(config, params, inputs, prompts, settings=DecodingSettings(max_decode_length=3))
  single = decoding.generate(
    config, params, decoder_prompt_tokens=inputs, prompt=prompts[1], settings=DecodingSettings(max_decode_length=3)
  )
  np.testing.assert_array_equal(out.all_tokens[:, 1], single.tokens)
  logp = ensembles.candidate_log_probs(config, params, inputs, np.array([[9, 1]]), prompts)
  expected = decoding.sequence_log_probs(
    config, params, None, np.array([[9, 1], [9, 1]]), decoder_prompt_tokens=inputs, prompt=prompts[0]
  )
  np.testing.assert_allclose(logp[:, 0, 0], expected, rtol=1e-5, atol=1e-5)
