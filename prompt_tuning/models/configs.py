"""T5 configurations: the dataclass every module reads, and the published sizes.

Sizes follow the public T5 releases (Raffel et al. 2020, table 14; the T5 1.1
and mT5 checkpoint cards). `get_config("t5_1_1_base")` returns one; any field
can be overridden with keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import jax.numpy as jnp

# T5's SentencePiece model has 32,000 pieces plus 100 sentinels; the released
# embedding tables are padded to a multiple of 128.
T5_VOCAB_SIZE = 32128
MT5_VOCAB_SIZE = 250112

_ACTIVATIONS = {"relu": ("relu",), "gated-gelu": ("gelu", "linear"), "gated-relu": ("relu", "linear")}
# Rematerialization of each layer in the backward pass (`prompt_tuning.models.t5._layer_class` maps them to
# jax.checkpoint policies): "none" keeps every activation the backward pass needs; "full" keeps only each layer's
# inputs and recomputes the rest (jax.checkpoint with no policy); "dots_saveable" keeps the matmul outputs and
# recomputes the elementwise work between them (jax.checkpoint_policies.dots_saveable).
REMAT_POLICIES = ("none", "full", "dots_saveable")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder-decoder (or decoder-only) model.

  Attributes:
    vocab_size: rows of the token embedding (and columns of the logits).
    emb_dim: model width (Hugging Face `d_model`).
    num_heads: attention heads.
    head_dim: width of one head (Hugging Face `d_kv`); need not equal
      `emb_dim / num_heads`.
    mlp_dim: hidden width of the feed-forward block (Hugging Face `d_ff`).
    num_encoder_layers: encoder blocks (ignored when `decoder_only`).
    num_decoder_layers: decoder blocks.
    mlp_activations: ("relu",) for T5 1.0; ("gelu", "linear") for the gated
      GELU of T5 1.1 / mT5 / LM-adapted models.
    logits_via_embedding: tie the output projection to the token embedding
      (T5 1.0); the decoder output is then scaled by `emb_dim ** -0.5`.
    relative_attention_num_buckets: relative-position buckets.
    relative_attention_max_distance: distance beyond which buckets saturate.
    dropout_rate: dropout on embeddings, attention weights and block outputs.
    layer_norm_epsilon: epsilon of the RMS layer norm.
    decoder_only: a single causal stack without cross-attention (prefix LM).
    dtype: activation dtype (e.g. "bfloat16"); attention logits and softmax, layer norm statistics, the relative
      position bias and the output logits are float32 whatever it is.
    param_dtype: dtype parameters are created in (and the frozen backbone is cast to: FROZEN_DTYPE).
    remat: rematerialization policy of every layer, one of `REMAT_POLICIES` ("none", "full", "dots_saveable");
      True and False mean "full" and "none".
  """

  vocab_size: int = T5_VOCAB_SIZE
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  mlp_activations: tuple[str, ...] = ("relu",)
  logits_via_embedding: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  decoder_only: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_decoder_layers"):
      if getattr(self, name) <= 0:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}.")
    if not self.decoder_only and self.num_encoder_layers <= 0:
      raise ValueError("T5Config.num_encoder_layers must be positive for an encoder-decoder model.")
    # gin and JSON hand lists over; keep the dataclass hashable.
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for act in self.mlp_activations:
      if act not in ("relu", "gelu", "linear", "silu", "gelu_exact"):
        raise ValueError(f"Unknown MLP activation {act!r}; use relu, gelu, gelu_exact, silu or linear.")
    if isinstance(self.remat, bool):
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"T5Config.remat={self.remat!r} is not a rematerialization policy: use one of {', '.join(REMAT_POLICIES)} "
        "(REMAT_POLICY)."
      )
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(
          f"T5Config.{name}={getattr(self, name)!r} is not a dtype (try 'float32' or 'bfloat16')."
        ) from e

  @property
  def activation_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self) -> Any:
    return jnp.dtype(self.param_dtype)

  @property
  def encoder_depth(self) -> int:
    """Encoder blocks the model runs: `num_encoder_layers`, or 0 for a decoder-only model (which has no encoder and
    no cross-attention)."""
    return 0 if self.decoder_only else self.num_encoder_layers

  # What the model offers, for code outside models/ to ask instead of branching on `decoder_only`.

  @property
  def stacks(self) -> tuple[str, ...]:
    """The layer stacks the model has, in order: ("encoder", "decoder"), or ("decoder",) for a decoder-only model."""
    return ("decoder",) if self.decoder_only else ("encoder", "decoder")

  def depth(self, stack: str) -> int:
    """Layers of `stack` ("encoder" or "decoder"); 0 for a stack the model does not have."""
    return self.encoder_depth if stack == "encoder" else self.num_decoder_layers

  def attentions(self, stack: str) -> tuple[str, ...]:
    """The attentions every layer of `stack` has: self-attention, and cross-attention in an encoder-decoder model's
    decoder; () for a stack the model does not have."""
    if stack not in self.stacks:
      return ()
    return ("self_attention", "cross_attention") if stack == "decoder" and self.encoder_depth else ("self_attention",)

  @property
  def takes_packed_rows(self) -> bool:
    """Whether training rows may pack several examples (seqio's segment ids): the encoder-decoder model takes them;
    a decoder-only (prefix LM) one trains on unpacked rows."""
    return not self.decoder_only

  def sequence_lengths(self, inputs: int, targets: int, prompt: int = 0) -> tuple[int, int]:
    """(encoder positions, decoder positions) of an example of `inputs` and `targets` tokens with `prompt` input
    vectors: the encoder reads the prompt and inputs, the decoder the targets; a decoder-only model reads all of them
    in its one sequence (0 encoder positions)."""
    if self.decoder_only:
      return 0, prompt + inputs + targets
    return prompt + inputs, targets

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def activations_from_feed_forward_proj(feed_forward_proj: str) -> tuple[str, ...]:
  """Maps Hugging Face's `feed_forward_proj` string to `mlp_activations`."""
  if feed_forward_proj in _ACTIVATIONS:
    return _ACTIVATIONS[feed_forward_proj]
  if feed_forward_proj.startswith("gated-"):
    act = feed_forward_proj[len("gated-") :]
    if act in ("gelu_new", "gelu_pytorch_tanh"):
      return ("gelu", "linear")
    if act in ("silu", "gelu"):
      return ("gelu_exact" if act == "gelu" else act, "linear")
  raise ValueError(
    f"Unsupported feed_forward_proj {feed_forward_proj!r}: expected 'relu' (T5 1.0) or "
    "'gated-gelu' (T5 1.1, mT5, LM-adapted)."
  )


def _t5_1_0(emb, heads, head_dim, mlp, layers):
  return T5Config(
    emb_dim=emb,
    num_heads=heads,
    head_dim=head_dim,
    mlp_dim=mlp,
    num_encoder_layers=layers,
    num_decoder_layers=layers,
    mlp_activations=("relu",),
    logits_via_embedding=True,
  )


def _t5_1_1(emb, heads, mlp, layers, vocab=T5_VOCAB_SIZE):
  return T5Config(
    vocab_size=vocab,
    emb_dim=emb,
    num_heads=heads,
    head_dim=64,
    mlp_dim=mlp,
    num_encoder_layers=layers,
    num_decoder_layers=layers,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    dropout_rate=0.0,
  )


_T5_1_1_SIZES = {
  "small": (512, 6, 1024, 8),
  "base": (768, 12, 2048, 12),
  "large": (1024, 16, 2816, 24),
  "xl": (2048, 32, 5120, 24),
  "xxl": (4096, 64, 10240, 24),
}

CONFIGS: dict[str, T5Config] = {
  "t5_1_0_small": _t5_1_0(512, 8, 64, 2048, 6),
  "t5_1_0_base": _t5_1_0(768, 12, 64, 3072, 12),
  "t5_1_0_large": _t5_1_0(1024, 16, 64, 4096, 24),
  "t5_1_0_xl": _t5_1_0(1024, 32, 128, 16384, 24),
  "t5_1_0_xxl": _t5_1_0(1024, 128, 128, 65536, 24),
  **{f"t5_1_1_{k}": _t5_1_1(*v) for k, v in _T5_1_1_SIZES.items()},
  # The LM-adapted checkpoints (Lester et al. 2021, section 3.1) share the
  # T5 1.1 architecture; only their weights differ.
  **{f"t5_1_1_lm100k_{k}": _t5_1_1(*v) for k, v in _T5_1_1_SIZES.items()},
  **{f"mt5_{k}": _t5_1_1(*v, vocab=MT5_VOCAB_SIZE) for k, v in _T5_1_1_SIZES.items()},
  # The project's own small pretrained model, shipped in prompt_tuning/assets/demo_t5 (`make demo-model` rebuilds
  # it): T5 1.1's architecture at 10.1M parameters, with an 8,192-token vocabulary (8,092 pieces + 100 sentinels).
  "t5_1_1_demo": _t5_1_1(256, 4, 768, 3, vocab=8192),
  # Two smaller members of the demo family (#17), pretrained with the same recipe, corpus and vocabulary and shipped in
  # prompt_tuning/assets/demo_t5_3m and demo_t5_1m: 3.6M and 0.93M parameters (10.8x below t5_1_1_demo), heads of 32.
  "t5_1_1_demo_3m": dataclasses.replace(_t5_1_1(128, 4, 384, 3, vocab=8192), head_dim=32),
  "t5_1_1_demo_1m": dataclasses.replace(_t5_1_1(48, 2, 128, 2, vocab=8192), head_dim=32),
  # Tiny models for tests. `t5_1_1_tiny` is the architecture of the reference
  # T5X checkpoint (embed 4, 2 heads of 2, MLP 8, 2+2 layers, 4 buckets).
  "t5_1_1_tiny": T5Config(
    emb_dim=4,
    num_heads=2,
    head_dim=2,
    mlp_dim=8,
    num_encoder_layers=2,
    num_decoder_layers=2,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    relative_attention_num_buckets=4,
    relative_attention_max_distance=8,
    dropout_rate=0.0,
  ),
  "t5_1_0_tiny": T5Config(
    vocab_size=128,
    emb_dim=16,
    num_heads=2,
    head_dim=8,
    mlp_dim=32,
    num_encoder_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.0,
  ),
  "decoder_only_tiny": T5Config(
    vocab_size=128,
    emb_dim=16,
    num_heads=2,
    head_dim=8,
    mlp_dim=32,
    num_encoder_layers=0,
    num_decoder_layers=2,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.0,
    decoder_only=True,
  ),
}


def get_config(name: str, **overrides) -> T5Config:
  """Returns the named configuration, with `overrides` applied.

  Raises:
    ValueError: for an unknown name, listing the closest known ones.
  """
  if name not in CONFIGS:
    close = difflib.get_close_matches(name, CONFIGS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown T5 size {name!r}.{hint} Known sizes: {', '.join(sorted(CONFIGS))}.")
  return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]
