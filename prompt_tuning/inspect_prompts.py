"""What a learned prompt looks like: each prompt vector's nearest vocabulary tokens.

Lester et al. (2021), the "Interpretability" section: for every prompt
vector, the tokens of the frozen model's embedding table with the highest
cosine similarity. Class labels often show up among them, and a prompt
initialized from vocabulary keeps words near its vectors.

    neighbours = nearest_tokens(prompt, params["token_embedder"]["embedding"], k=5, vocabulary=vocab)
    print(format_nearest(neighbours))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Neighbour(NamedTuple):
  """One vocabulary token near a prompt vector."""

  token_id: int
  piece: str | None  # the SentencePiece piece, or None without a vocabulary
  cosine: float


def cosine_similarities(prompt: Array, embedding: Array, eps: float = 1e-8) -> Array:
  """Cosine similarity of every prompt vector to every embedding row: [P, D] x [V, D] -> [P, V] float32."""
  prompt = jnp.asarray(prompt, jnp.float32)
  embedding = jnp.asarray(embedding, jnp.float32)
  prompt = prompt / jnp.maximum(jnp.linalg.norm(prompt, axis=-1, keepdims=True), eps)
  embedding = embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=-1, keepdims=True), eps)
  return prompt @ embedding.T


def _piece(vocabulary: Any, token_id: int) -> str | None:
  """The SentencePiece piece of `token_id` (seqio's sentinels included), else its decoded text."""
  tokenizer = getattr(vocabulary, "tokenizer", None)
  if tokenizer is not None and token_id < tokenizer.get_piece_size():
    return tokenizer.id_to_piece(token_id)
  try:
    return vocabulary.decode([token_id])
  except Exception:  # noqa: BLE001 - a vocabulary that cannot name an id gets None, not a crash
    return None


def nearest_tokens(prompt: Array, embedding: Array, k: int = 5, vocabulary: Any = None) -> list[list[Neighbour]]:
  """The k nearest vocabulary tokens of each prompt vector, by cosine similarity.

  Args:
    prompt: [P, D] a prompt.
    embedding: [V, D] the backbone's token embedding table.
    k: neighbours per prompt vector.
    vocabulary: optional seqio Vocabulary (or anything with `decode`) to name
      the tokens. With one, only its ids are candidates: T5's table has rows
      beyond the vocabulary (32,100 ids, 32,128 rows) that no token uses.

  Returns:
    P lists of k Neighbour(token_id, piece, cosine), most similar first.

  Raises:
    ValueError: widths that differ, or k < 1.
  """
  prompt, embedding = np.asarray(prompt), np.asarray(embedding)
  if prompt.ndim != 2 or embedding.ndim != 2 or prompt.shape[1] != embedding.shape[1]:
    raise ValueError(
      f"prompt {prompt.shape} and embedding {embedding.shape} must be [P, D] and [V, D] of the same width D: "
      "compare a prompt with the embedding of the backbone it was trained for."
    )
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}.")
  size = getattr(vocabulary, "vocab_size", None) if vocabulary is not None else None
  candidates = embedding if size is None else embedding[: min(size, embedding.shape[0])]
  k = min(k, candidates.shape[0])
  scores, ids = jax.lax.top_k(cosine_similarities(prompt, candidates), k)  # [P, k]
  scores, ids = np.asarray(scores), np.asarray(ids)
  return [
    [
      Neighbour(int(i), None if vocabulary is None else _piece(vocabulary, int(i)), float(s))
      for i, s in zip(row_ids, row_scores)
    ]
    for row_ids, row_scores in zip(ids, scores)
  ]


def format_nearest(neighbours: list[list[Neighbour]]) -> str:
  """Plain text, one line per prompt vector: `  3: ▁great (0.812)  ▁good (0.794)  ...`."""
  width = len(str(max(len(neighbours) - 1, 0)))
  lines = []
  for position, row in enumerate(neighbours):
    names = (f"{n.piece if n.piece is not None else n.token_id} ({n.cosine:.3f})" for n in row)
    lines.append(f"{position:>{width}}: " + "  ".join(names))
  return "\n".join(lines)
