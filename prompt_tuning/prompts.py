"""Soft prompts: the [P, D] arrays prompt tuning trains, and the initializers that make them.

A prompt is a float32 array [P, D] (P prompt vectors of the backbone's
embedding width D) with logical axes `PROMPT_AXES` = ("prompt",
"prompt_embed"), replicated by default. It lives in its own pytree and reaches
the frozen T5 as an argument (`T5.apply(..., prompt=prompt)`).

Initializers are factories, each `@gin.configurable`, returning an
`Initializer`: (rng key, embedding table [V, D], length P) -> [P, D] float32.

    PROMPT_INIT = @prompt_tuning.prompts.sampled_vocab()
    prompt_tuning.prompts.sampled_vocab.num_common = 5000

- `random_uniform(scale)`: uniform in [-scale, scale];
- `sampled_vocab(num_common)`: embeddings of distinct frequent tokens;
- `class_labels(labels, vocabulary, fallback)`: the class labels' embeddings;
- `from_text(text, vocabulary)`: the embeddings of a text;
- `from_file(path)`: a saved prompt (`.npy`, `.safetensors`, a PEFT adapter
  folder, or a training run's folder; see `load_prompt_file`).

`init_prompt` runs an initializer and checks what it returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

import gin
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# (rng key, embedding table [V, D], prompt length P) -> prompt [P, D] float32
Initializer = Callable[[Array, Array, int], Array]

PROMPT_AXES = ("prompt", "prompt_embed")

# T5's SentencePiece ids 0, 1 and 2 are pad, EOS and unk: markers, not words.
# `sampled_vocab` never draws them (an EOS-like prompt vector would look like
# the end of the input to the frozen model).
NUM_SPECIAL_IDS = 3


class Vocabulary(Protocol):
  """What the text initializers need of a vocabulary (a seqio Vocabulary has it)."""

  def encode(self, s: str) -> Sequence[int]: ...


def _check_length(length: int) -> None:
  if length < 1:
    raise ValueError(f"prompt length must be >= 1, got {length}; set PROMPT_LENGTH to a positive number.")


def _rows(embedding: Array, ids: Sequence[int] | np.ndarray) -> Array:
  """The embedding rows of `ids`, float32 [len(ids), D]."""
  return jnp.take(embedding, jnp.asarray(ids, jnp.int32), axis=0).astype(jnp.float32)


def _encode(vocabulary: Vocabulary, text: str, what: str, vocab_size: int) -> list[int]:
  ids = [int(i) for i in vocabulary.encode(text)]
  if not ids:
    raise ValueError(f"{what} {text!r} encodes to no tokens; give a non-empty text.")
  if max(ids) >= vocab_size:
    raise ValueError(
      f"{what} {text!r} encodes to id {max(ids)}, beyond the embedding table's {vocab_size} rows: "
      "the vocabulary does not belong to this backbone."
    )
  return ids


@gin.configurable(module="prompt_tuning.prompts")
def random_uniform(scale: float = 0.5) -> Initializer:
  """Uniform values in [-scale, scale].

  Lester et al. (2021), section 3 (prompt initialization): random uniform
  in [-0.5, 0.5], their weakest initialization but the simplest.
  """

  def init(rng: Array, embedding: Array, length: int) -> Array:
    _check_length(length)
    return jax.random.uniform(rng, (length, embedding.shape[1]), jnp.float32, -scale, scale)

  return init


@gin.configurable(module="prompt_tuning.prompts")
def sampled_vocab(num_common: int = 5000) -> Initializer:
  """Embeddings of P distinct tokens drawn from the `num_common` most common ones.

  Lester et al. (2021), section 3 (prompt initialization): the 5,000 most
  common tokens of T5's SentencePiece vocabulary. Its ids are ordered by
  frequency, so the candidates are the ids below `num_common`, minus the
  special ids 0-2 (pad, EOS, unk; see NUM_SPECIAL_IDS): ids 3 .. num_common - 1.
  Tokens are distinct; they repeat only when P exceeds the number of candidates.
  """

  def init(rng: Array, embedding: Array, length: int) -> Array:
    _check_length(length)
    top = min(num_common, embedding.shape[0])
    candidates = top - NUM_SPECIAL_IDS
    if candidates < 1:
      raise ValueError(
        f"sampled_vocab(num_common={num_common}) leaves no token to sample from an embedding of "
        f"{embedding.shape[0]} rows once ids 0-{NUM_SPECIAL_IDS - 1} are skipped; raise num_common."
      )
    ids = NUM_SPECIAL_IDS + jax.random.choice(rng, candidates, (length,), replace=length > candidates)
    return _rows(embedding, ids)

  return init


def label_embedding(label: str, vocabulary: Vocabulary, embedding: Array) -> Array:
  """The embedding [D] of a class label: the mean of its word pieces' rows."""
  ids = _encode(vocabulary, label, "class label", embedding.shape[0])
  return jnp.mean(_rows(embedding, ids), axis=0)


@gin.configurable(module="prompt_tuning.prompts")
def class_labels(labels: Sequence[str], vocabulary: Vocabulary, fallback: Initializer | None = None) -> Initializer:
  """The first positions hold the class labels' embeddings, the rest come from `fallback`.

  Lester et al. (2021), section 2.1 and 3 (prompt initialization): the
  embeddings of the output classes, a multi-token label being the mean of its
  tokens' embeddings, and sampled vocabulary for the positions left over.

  Args:
    labels: the class label words, e.g. ("positive", "negative").
    vocabulary: a seqio Vocabulary (anything with `encode(str) -> list[int]`).
    fallback: initializer of the remaining positions (default `sampled_vocab()`).
  """
  fallback = sampled_vocab() if fallback is None else fallback

  def init(rng: Array, embedding: Array, length: int) -> Array:
    _check_length(length)
    if len(labels) > length:
      raise ValueError(
        f"{len(labels)} class labels do not fit a prompt of length {length}: raise PROMPT_LENGTH to at least "
        f"{len(labels)}, or use fewer labels."
      )
    parts = [jnp.stack([label_embedding(label, vocabulary, embedding) for label in labels])] if labels else []
    if length > len(labels):
      parts.append(fallback(rng, embedding, length - len(labels)).astype(jnp.float32))
    return jnp.concatenate(parts, axis=0)

  return init


@gin.configurable(module="prompt_tuning.prompts")
def from_text(text: str, vocabulary: Vocabulary) -> Initializer:
  """The embeddings of `text`'s tokens, cut to P or repeated (cycling) up to P."""

  def init(rng: Array, embedding: Array, length: int) -> Array:
    del rng
    _check_length(length)
    ids = _encode(vocabulary, text, "prompt text", embedding.shape[0])
    return _rows(embedding, np.resize(np.asarray(ids), length))

  return init


def load_prompt_file(path: str | os.PathLike, embed_dim: int | None = None) -> np.ndarray:
  """Reads a saved prompt as float32 [P, D]; see `prompt_tuning.checkpoints.prompt_files`.

  Raises:
    ValueError: an unreadable format, or a prompt that is not [P, embed_dim] floats.
    FileNotFoundError: nothing at `path`.
  """
  from prompt_tuning.checkpoints import prompt_files

  return prompt_files.load_prompt_file(path, embed_dim=embed_dim)


@gin.configurable(module="prompt_tuning.prompts")
def from_file(path: str | os.PathLike) -> Initializer:
  """A prompt saved before: `.npy` (the reference implementation's format),
  `.safetensors`, a PEFT prompt-tuning adapter folder, or a training run's
  folder (one holding `prompt.npy`, or a MODEL_DIR with
  `numpy_checkpoints/checkpoint_<step>/prompt.npy`: the latest step is used).

  Its length must be P and its width the backbone's D; other float dtypes
  (the reference's float64) are cast to float32.
  """

  def init(rng: Array, embedding: Array, length: int) -> Array:
    del rng
    prompt = load_prompt_file(path, embed_dim=embedding.shape[1])
    if prompt.shape[0] != length:
      raise ValueError(
        f"the prompt in {os.fspath(path)!r} has {prompt.shape[0]} vectors but the prompt length is {length}: "
        f"set PROMPT_LENGTH = {prompt.shape[0]} to use this prompt."
      )
    return jnp.asarray(prompt, jnp.float32)

  return init


def init_prompt(rng: Array, initializer: Initializer, embedding: Array, length: int) -> Array:
  """Runs `initializer` and checks its result: float32 [length, D] where D is the embedding's width.

  Raises:
    ValueError: the initializer returned another shape or a non-float array.
  """
  prompt = initializer(rng, embedding, length)
  expected = (length, embedding.shape[1])
  if tuple(prompt.shape) != expected:
    raise ValueError(
      f"the prompt initializer returned shape {tuple(prompt.shape)}; expected {expected} (prompt length, the "
      "backbone's embedding width). Check PROMPT_LENGTH and the initializer."
    )
  if not jnp.issubdtype(prompt.dtype, jnp.floating):
    raise ValueError(f"the prompt initializer returned {prompt.dtype} values; a prompt holds floats.")
  return prompt.astype(jnp.float32)
