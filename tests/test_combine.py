"""Prompt combination modes: the joined layout, masks, positions, and the model's injection points."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import combine

# Two rows of tokens ending with EOS (1), and one without EOS, padded with 0.
TOKENS = np.array([[5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0], [4, 9, 0, 0, 0, 0]])
PROMPT = np.array([[-1.0], [-2.0]])  # P = 2, D = 1: values name the prompt vectors

# Where the prompt goes (token index of its first vector) in each row, per mode.
EXPECTED_START = {
  "prefix": [0, 0, 0],
  "prefix_after_bos": [1, 1, 1],
  "suffix": [3, 1, 2],  # before the final EOS; after the last token when there is no EOS
  "suffix_after_eos": [4, 2, 2],
}


def _join(mode, prompt_lengths=None):
  embedded = jnp.asarray(TOKENS, jnp.float32)[..., None]  # [B, T, 1]: a token's value is its id
  return combine.join(
    PROMPT, embedded, TOKENS > 0, mode=mode, tokens=jnp.asarray(TOKENS), prompt_lengths=prompt_lengths
  )


def _insert(row, start, values):
  return np.concatenate([row[:start], values, row[start:]])


@pytest.mark.parametrize("mode", combine.MODES)
def test_layout_and_mask_of_every_mode(mode):
  joined = _join(mode)
  for b, start in enumerate(EXPECTED_START[mode]):
    np.testing.assert_array_equal(joined.embedded[b, :, 0], _insert(TOKENS[b], start, PROMPT[:, 0]))
    np.testing.assert_array_equal(joined.mask[b], _insert(TOKENS[b] > 0, start, [True, True]))
    np.testing.assert_array_equal(joined.is_prompt[b], _insert(np.zeros(6, bool), start, [True, True]))
  # The token outputs come back in token order.
  np.testing.assert_array_equal(combine.gather_tokens(joined.embedded, joined)[..., 0], TOKENS)
  spread = combine.spread_tokens(jnp.asarray(TOKENS), joined, -7)
  np.testing.assert_array_equal(spread, np.where(joined.is_prompt, -7, joined.embedded[..., 0]))


def test_prompt_lengths_move_unused_vectors_to_the_end_and_mask_them():
  joined = _join("suffix", prompt_lengths=jnp.array([1, 0, 2]))
  np.testing.assert_array_equal(joined.embedded[0, :, 0], [5, 6, 7, -1, 1, 0, 0, -2])
  np.testing.assert_array_equal(joined.mask[0], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(joined.embedded[1, :, 0], [8, 1, 0, 0, 0, 0, -1, -2])  # no prompt at all
  np.testing.assert_array_equal(joined.mask[1], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(joined.embedded[2, :, 0], [4, 9, -1, -2, 0, 0, 0, 0])
  np.testing.assert_array_equal(combine.gather_tokens(joined.embedded, joined)[..., 0], TOKENS)


def test_right_justify_ends_every_row_at_the_last_slot():
  joined = _join("prefix")
  rolled, shift = combine.right_justify(joined)
  np.testing.assert_array_equal(shift, [2, 4, 4])
  assert bool(rolled.mask[:, -1].all())
  np.testing.assert_array_equal(rolled.embedded[1, :, 0], [0, 0, 0, 0, -1, -2, 8, 1])
  np.testing.assert_array_equal(combine.gather_tokens(rolled.embedded, rolled)[:, :2, 0], TOKENS[:, :2])


def test_no_prompt_is_the_identity_and_errors_are_explained():
  embedded = jnp.ones((3, 6, 4))
  joined = combine.join(None, embedded, TOKENS > 0, mode="suffix", tokens=TOKENS)
  assert joined.embedded is embedded and joined.mask.shape == (3, 6)
  with pytest.raises(ValueError, match="Unknown prompt combination 'middle'"):
    combine.join(jnp.ones((2, 4)), embedded, TOKENS > 0, mode="middle")
  with pytest.raises(ValueError, match="needs the input tokens"):
    combine.join(jnp.ones((2, 4)), embedded, TOKENS > 0, mode="suffix")
  with pytest.raises(ValueError, match=r"expected \[P, 4\]"):
    combine.join(jnp.ones((2, 5)), embedded, TOKENS > 0)


# ---------------------------------------------------------------------------
# The model: a prompt made of token embeddings must act exactly like those
# tokens written into the input at the mode's position.


@pytest.fixture(scope="module")
def encdec():
  config = pt.get_config("t5_1_0_tiny")
  return config, pt.init_params(config, jax.random.key(0))


@pytest.fixture(scope="module")
def decoder_only():
  config = pt.get_config("decoder_only_tiny")
  return config, pt.init_params(config, jax.random.key(1))


@functools.cache
def _forward(config):
  def forward(params, enc, dec, targets, prompt, prompt_lengths, causal, mode):
    return pt.T5(config).apply(
      {"params": params},
      enc,
      dec,
      targets,
      prompt=prompt,
      prompt_lengths=prompt_lengths,
      decoder_causal_attention=causal,
      prompt_combination=mode,
    )

  return jax.jit(forward, static_argnames="mode")


def _start(mode, row, region):
  """The mode's insertion point in a row whose input part is row[:region]."""
  if mode == "prefix":
    return 0
  if mode == "prefix_after_bos":
    return 1
  if mode == "suffix":
    return region - 1 if row[region - 1] == 1 else region
  return region


def _hard_rows(rows, starts, z_rows, total):
  return np.stack([np.pad(_insert(r, s, z), (0, total - len(r) - len(z))) for r, s, z in zip(rows, starts, z_rows)])


@pytest.mark.parametrize("mode", combine.MODES)
def test_encoder_prompt_acts_like_inserted_tokens(encdec, mode):
  config, params = encdec
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 128, (3, 7))
  enc[0, 6], enc[1, 3], enc[1, 4:] = 1, 1, 0  # rows 0, 1 end with EOS; row 2 has none
  targets = rng.integers(2, 128, (3, 4))
  dec = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  z = rng.integers(2, 128, (3, 3))  # per-row prompt tokens
  lengths = np.array([3, 1, 2])
  prompt = params["token_embedder"]["embedding"][z]  # [B, P, D]
  soft = _forward(config)(params, enc, dec, targets, prompt, lengths, None, mode)
  starts = [_start(mode, row, int((row > 0).sum())) for row in enc]
  hard_enc = _hard_rows(enc, starts, [z[b, : lengths[b]] for b in range(3)], 10)
  hard = _forward(config)(params, hard_enc, dec, targets, None, None, None, "prefix")
  np.testing.assert_allclose(soft, hard, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", combine.MODES)
def test_decoder_only_prompt_acts_like_inserted_fully_visible_tokens(decoder_only, mode):
  config, params = decoder_only
  rng = np.random.default_rng(1)
  # Prefix-LM rows: start token 0, inputs (ending with EOS), targets; shifted right.
  sequence = rng.integers(2, 128, (2, 9))
  sequence[0, 3], sequence[1, 4] = 1, 1  # inputs x_1..x_n end with EOS at n = 4 and 5
  sequence[1, 8:] = 0
  region = np.array([5, 6])  # the start token and the inputs: n + 1 positions
  dec = np.pad(sequence[:, :-1], ((0, 0), (1, 0)))
  causal = (np.arange(9)[None] < region[:, None]).astype(np.int32)
  z = rng.integers(2, 128, (2, 3))
  prompt = params["token_embedder"]["embedding"][z]
  soft = _forward(config)(params, None, dec, sequence, prompt, None, causal, mode)
  starts = [_start(mode, dec[b], region[b]) for b in range(2)]
  hard = _forward(config)(
    params,
    None,
    _hard_rows(dec, starts, z, 12),
    _hard_rows(sequence, starts, z, 12),  # any non-zero target marks the prompt positions real
    None,
    None,
    _hard_rows(causal, starts, np.ones_like(z), 12),
    "prefix",
  )
  keep = [np.delete(np.arange(12), np.arange(s, s + 3))[:9] for s in starts]
  hard = np.stack([np.asarray(hard[b])[keep[b]] for b in range(2)])
  real = sequence > 0
  np.testing.assert_allclose(np.asarray(soft)[real], hard[real], rtol=1e-5, atol=1e-5)


def test_decoder_only_suffix_needs_the_inputs_part(decoder_only):
  config, params = decoder_only
  tokens = np.ones((1, 4), np.int32)
  with pytest.raises(ValueError, match="decoder_causal_attention"):
    pt.T5(config).apply({"params": params}, None, tokens, prompt=jnp.ones((2, 16)), prompt_combination="suffix")


def test_prompt_gradient_reaches_every_used_vector(encdec):
  config, params = encdec
  enc = np.array([[5, 6, 7, 1, 0], [8, 1, 0, 0, 0]])
  targets = np.array([[9, 1], [4, 1]])
  dec = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  prompt = jax.random.normal(jax.random.key(2), (2, 3, config.emb_dim))
  lengths = np.array([3, 1])
  loss = lambda p: jnp.sum(_forward(config)(params, enc, dec, targets, p, lengths, None, "suffix") ** 2)
  used = np.abs(np.asarray(jax.grad(loss)(prompt))).sum(-1) > 0  # [B, P]
  np.testing.assert_array_equal(used, np.arange(3)[None] < lengths[:, None])  # unused vectors get none
