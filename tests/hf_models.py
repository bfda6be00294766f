"""Tiny Hugging Face PyTorch T5 models built in the tests, the independent side of parity checks."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the interop extra (torch, transformers, peft)")
transformers = pytest.importorskip("transformers")

# Shapes chosen to catch transposition and head-splitting mistakes: d_kv is
# not d_model / num_heads, the decoder is deeper than the encoder, and the
# bucket settings differ from T5's defaults.
SHAPES = {
  "t5_1_0": dict(
    d_model=24,
    d_kv=10,
    d_ff=40,
    num_heads=3,
    num_layers=2,
    num_decoder_layers=3,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
  ),
  "t5_1_1": dict(
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_heads=2,
    num_layers=3,
    num_decoder_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
  ),
}


@functools.cache
def hf_model(kind: str, vocab_size: int = 100, seed: int = 0):
  """A random HF T5ForConditionalGeneration (eval mode) of the given kind."""
  torch.manual_seed(seed)
  config = transformers.T5Config(
    vocab_size=vocab_size,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
    **SHAPES[kind],
  )
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not SHAPES[kind]["tie_word_embeddings"]:
    # transformers 5 ties lm_head to the embedding even when asked not to
    # (it only drops the d_model^-0.5 scaling); T5 1.1 checkpoints have their
    # own lm_head, so give the model one.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * config.d_model**-0.5)
  with torch.no_grad():
    # Random T5s love the pad token; make it unattractive so greedy decoding
    # produces varied, input-dependent sequences worth comparing.
    model.shared.weight[0] = 0.0
    model.lm_head.weight[0] = 0.0
  return model


def save(model, path) -> str:
  model.save_pretrained(path)
  return str(path)


def padded_batch(rng: np.random.Generator, batch: int, length: int, vocab: int, lengths) -> np.ndarray:
  tokens = rng.integers(2, vocab, (batch, length))
  for row, n in enumerate(lengths):
    tokens[row, n:] = 0
  return tokens


def shift_right(targets: np.ndarray) -> np.ndarray:
  return np.concatenate([np.zeros((targets.shape[0], 1), targets.dtype), targets[:, :-1]], axis=1)


def seq2seq_logits(model, enc: np.ndarray, dec_in: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Logits of a (PEFT-wrapped or plain) HF seq2seq model on a padded batch."""
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0).long(),
      decoder_input_ids=torch.tensor(dec_in),
      decoder_attention_mask=torch.tensor(targets > 0).long(),
    ).logits.numpy()
