"""Nearest vocabulary tokens of prompt vectors (interpretability), on the real T5 vocabulary."""

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import inspect_prompts

POSITIVE, GREAT = 1465, 248


def test_nearest_tokens_match_a_brute_force_cosine_ranking(embedding, vocabulary):
  prompt = np.stack([embedding[POSITIVE] * 3.0, embedding[GREAT] + 0.01, np.array([1.0, -2.0, 0.5, 0.0])])
  neighbours = inspect_prompts.nearest_tokens(prompt, embedding, k=4, vocabulary=vocabulary)
  assert [len(row) for row in neighbours] == [4, 4, 4]
  # A scaled token embedding's nearest token is that token, at cosine 1.
  assert neighbours[0][0].token_id == POSITIVE and neighbours[0][0].piece == "▁positive"
  assert neighbours[0][0].cosine == pytest.approx(1.0, abs=1e-5)
  table = embedding[:32100].astype(np.float64)
  cosine = (prompt @ table.T) / np.linalg.norm(prompt, axis=1)[:, None] / np.linalg.norm(table, axis=1)[None]
  for row, expected in zip(neighbours, np.argsort(-cosine, axis=1)[:, :4]):
    assert [n.token_id for n in row] == list(expected)
    assert all(a.cosine >= b.cosine for a, b in zip(row, row[1:]))
  text = inspect_prompts.format_nearest(neighbours)
  assert text.splitlines()[0].startswith("0: ▁positive (1.000)")
  assert len(text.splitlines()) == 3


def test_rows_beyond_the_vocabulary_are_candidates_only_without_one(embedding, vocabulary):
  padded_row = embedding[32110][None]  # T5 tables have 28 rows past the 32,100 ids
  alone = inspect_prompts.nearest_tokens(padded_row, embedding, k=1)
  assert alone[0][0].token_id == 32110 and alone[0][0].piece is None
  named = inspect_prompts.nearest_tokens(padded_row, embedding, k=1, vocabulary=vocabulary)
  assert named[0][0].token_id < 32100
  sentinel = inspect_prompts.nearest_tokens(embedding[32099][None], embedding, k=1, vocabulary=vocabulary)
  assert sentinel[0][0].piece == "▁<extra_id_0>"  # seqio's piece for id 32099


def test_mismatched_widths_are_explained():
  with pytest.raises(ValueError, match="same width D"):
    inspect_prompts.nearest_tokens(jnp.ones((2, 4)), jnp.ones((10, 8)))
