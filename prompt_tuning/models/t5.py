"""The T5 model (1.0, 1.1, mT5, LM-adapted; encoder-decoder or decoder-only) in Flax linen.

The frozen backbone receives the trainable vectors as *arguments*, one pytree
of adapters looked up by site (`prompt_tuning.models.adapters`):

    logits = T5(config).apply({"params": frozen}, encoder_input_tokens, decoder_input_tokens,
                              decoder_target_tokens=None, adapters=method_vectors)

`prompt=`, `prompt_lengths=` and `prefix=` are shorthands for the "input"
site and the attention prefix sites of `adapters` (they are merged into it):

- `prompt`: [P, embed] (one prompt for every row) or [batch, P, embed] (one per
  row). It joins the embedded encoder input (decoder-only: the embedded
  decoder input) where `prompt_combination` says (`prompt_tuning.combine`:
  "prefix" by default, exactly as Hugging Face PEFT prompt tuning does;
  "prefix_after_bos", "suffix", "suffix_after_eos"), fully visible, with
  relative positions computed over the joined sequence. `prompt_lengths`
  (int [batch]) lets rows use fewer vectors (0: no prompt).
- `prefix`: a dict with any of the sites "encoder" (encoder self-attention),
  "decoder" (decoder self-attention) and "cross" (encoder-decoder attention);
  a decoder-only model has "decoder" only. Each is {"key": k, "value": v} with
  k, v of shape [layers, P, heads, head_dim] (shared) or
  [layers, batch, P, heads, head_dim] (per row), and optionally "mask", bool
  [P] or [batch, P], the prefix vectors in use (rows with shorter prefixes or
  none in a mixed batch). Prefix keys are visible to every query and carry no
  relative position bias: they are not positions in the sequence (see
  `prompt_tuning.methods.prefix` for why).

Parameter names follow the T5X/Flaxformer tree (`encoder/layers_0/attention/
query/kernel`, `decoder/logits_dense/kernel`, `token_embedder/embedding`, ...),
so T5X checkpoints map onto it without renaming.

Padding: encoder positions with token 0 are masked as keys; decoder positions
are real where `decoder_target_tokens > 0` (all real when it is not given).
Padded query positions still produce (meaningless) outputs, as in Hugging Face
T5; the loss must weight them out.

Packing (encoder-decoder only): with `encoder_segment_ids` and
`decoder_segment_ids` (seqio's packed features: several examples per row,
segment ids 1, 2, ..., 0 for padding) every attention stays within its
segment: encoder self-attention, causal decoder self-attention, and
cross-attention from decoder segment s to encoder segment s (its prompt
included). The prompt joins every segment (`combine.join_packed`): each
segment's inputs end with P `combine.PROMPT_SLOT` tokens that the prompt takes.
Prefix keys and values are seen by every query, so by every segment. The
relative position bias is computed once from the row's indices: segments are
contiguous runs, so within a segment index distances are the per-segment
position distances (seqio's `*_positions`, which therefore are not read), and
pairs across segments are masked; T5X computes it the same way.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from prompt_tuning import combine
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.layers import (
  MASK_VALUE,
  MLP,
  Attention,
  Dense,
  RelativePositionBias,
  RMSNorm,
  fan_in_init,
  normal_init,
)

Array = jax.Array
Prefix = dict[str, dict[str, Array]]  # the `prefix=` shorthand: {site: {"key", "value", "mask"}}
Adapters = sites.Adapters

PREFIX_SITES = tuple(sites.PREFIX_SITES)

# Python-valued layer arguments (flags, lengths): static under remat, named here and located by signature.
_STATIC_LAYER_ARGUMENTS = ("decode", "init_cache_length", "deterministic")


def _dtypes(config: T5Config) -> dict[str, Any]:
  return {"dtype": config.activation_dtype, "param_dtype": config.parameter_dtype}


def _mask_bias(mask: Array) -> Array:
  """Boolean visibility [B, 1, Tq, Tk] (or broadcastable) -> additive bias."""
  return jnp.where(mask, 0.0, MASK_VALUE).astype(jnp.float32)


class Embed(nn.Module):
  """The token embedding, shared by encoder, decoder and (T5 1.0) the logits."""

  vocab_size: int
  emb_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(normal_init(1.0), ("vocab", "embed")),
      (self.vocab_size, self.emb_dim),
      self.param_dtype,
    )

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """float32 logits against the embedding table: [..., embed] -> [..., vocab] (accumulated in float32)."""
    embedding = self.embedding.astype(self.dtype)
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), embedding, preferred_element_type=jnp.float32)


class EncoderLayer(nn.Module):
  config: T5Config

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.pre_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.attention = Attention(cfg.num_heads, cfg.head_dim, cfg.emb_dim, cfg.dropout_rate, **dt)
    self.pre_mlp_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.mlp = MLP(cfg.mlp_dim, cfg.emb_dim, cfg.mlp_activations, cfg.dropout_rate, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, x, bias, adapters: Adapters, deterministic):
    h = self.pre_attention_layer_norm(x)
    h = self.attention(h, h, bias, adapters=adapters.get("self_attention"), deterministic=deterministic)
    x = x + self.dropout(h, deterministic=deterministic)
    h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=deterministic, adapters=adapters.get("mlp"))
    x = x + self.dropout(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class DecoderLayer(nn.Module):
  config: T5Config

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.pre_self_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.self_attention = Attention(cfg.num_heads, cfg.head_dim, cfg.emb_dim, cfg.dropout_rate, **dt)
    if not cfg.decoder_only:
      self.pre_cross_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
      self.encoder_decoder_attention = Attention(cfg.num_heads, cfg.head_dim, cfg.emb_dim, cfg.dropout_rate, **dt)
    self.pre_mlp_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.mlp = MLP(cfg.mlp_dim, cfg.emb_dim, cfg.mlp_activations, cfg.dropout_rate, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(
    self,
    x,
    encoded,
    self_bias,
    cross_bias,
    adapters: Adapters,
    decode,
    cache_index,
    cache_rows,
    init_cache_length,
    deterministic,
  ):
    h = self.pre_self_attention_layer_norm(x)
    h = self.self_attention(
      h,
      h,
      self_bias,
      adapters=adapters.get("self_attention"),
      decode=decode,
      cache_index=cache_index,
      cache_rows=cache_rows,
      init_cache_length=init_cache_length,
      deterministic=deterministic,
    )
    x = x + self.dropout(h, deterministic=deterministic)
    if not self.config.decoder_only:
      h = self.pre_cross_attention_layer_norm(x)
      h = self.encoder_decoder_attention(
        h,
        None if decode else encoded,
        cross_bias,
        adapters=adapters.get("cross_attention"),
        decode=decode,
        cache_rows=cache_rows,
        init_cache_length=None if init_cache_length is None else 0,
        deterministic=deterministic,
      )
      x = x + self.dropout(h, deterministic=deterministic)
    h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=deterministic, adapters=adapters.get("mlp"))
    x = x + self.dropout(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


def _argument_names(cls) -> list[str]:
  return list(inspect.signature(cls.__call__).parameters)  # "self" first, as remat counts


# REMAT_POLICIES (models/configs.py) -> what jax.checkpoint saves: "full" saves nothing (only the layer's inputs
# stay), "dots_saveable" saves every matmul's output.
_CHECKPOINT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


def _layer_class(cls, config: T5Config):
  """The layer class, rematerialized under `config.remat`'s policy, its Python-valued arguments static by name."""
  if config.remat == "none":
    return cls
  static = tuple(i for i, name in enumerate(_argument_names(cls)) if name in _STATIC_LAYER_ARGUMENTS)
  return nn.remat(cls, static_argnums=static, prevent_cse=True, policy=_CHECKPOINT_POLICIES[config.remat])


def _positional(cls, **arguments) -> tuple:
  """The arguments of `cls.__call__` in signature order: remat's static_argnums index positional arguments."""
  names = _argument_names(cls)[1:]
  if set(arguments) != set(names):
    raise TypeError(f"{cls.__name__} takes {names}, got {sorted(arguments)}.")
  return tuple(arguments[name] for name in names)


def _per_layer_prompt(x: Array, hidden: Adapters | None, joined: combine.Joined | None) -> Array:
  """The "hidden" site at the prompt positions: {"replace": v} and/or {"add": v}, v [P, embed] or [B, P, embed].

  "replace_mask" (bool [P] or [B, P]) limits "replace" to the prompt vectors it marks, so rows that replace and
  rows that do not (other methods, "add" mode) share one batch; "add" applies after "replace".
  """
  if not hidden:
    return x
  if joined is None or set(hidden) - {"replace", "replace_mask", "add"} or not {"replace", "add"} & set(hidden):
    raise ValueError(
      f"the hidden adapter site takes 'replace' (with an optional 'replace_mask') and/or 'add' (got {sorted(hidden)}) "
      "and a prompt in the input to mark the prompt positions."
    )
  if "replace" in hidden:
    where = joined.is_prompt  # [B, T]
    if "replace_mask" in hidden:
      marked = combine.at_prompt_positions(jnp.asarray(hidden["replace_mask"], jnp.float32)[..., None], joined)
      where = where & (marked[..., 0] > 0.5)
    spread = combine.at_prompt_positions(hidden["replace"], joined).astype(x.dtype)  # [B, T, embed]
    x = jnp.where(where[..., None], spread, x)
  if "add" in hidden:
    x = x + combine.at_prompt_positions(hidden["add"], joined).astype(x.dtype)
  return x


def _same_segment(query_segments: Array, key_segments: Array) -> Array:
  """bool [B, Tq, Tk]: the query and key positions belong to one segment (packing; 0 is padding)."""
  return (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)


class Encoder(nn.Module):
  """The bidirectional stack over embedded (and prompt-joined) inputs."""

  config: T5Config

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.relpos_bias = RelativePositionBias(
      cfg.num_heads,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      True,
      param_dtype=cfg.parameter_dtype,
    )
    layer = _layer_class(EncoderLayer, cfg)
    self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_encoder_layers)]
    self.encoder_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(
    self,
    x: Array,
    mask: Array,
    adapters: Adapters | None,
    deterministic: bool,
    joined: combine.Joined | None = None,
    segment_ids: Array | None = None,
  ) -> Array:
    """x: [B, T, embed] embedded inputs; mask: bool [B, T]; joined: where the prompt positions are (for the
    "hidden" site: per-layer prompts replacing, or added to, the prompt positions before each layer);
    segment_ids: int [B, T] of packed rows, attention kept within segments. Returns [B, T, embed]."""
    positions = jnp.arange(x.shape[1])
    visible = mask[:, None, :]  # [B, 1, T]: every query sees the real keys
    if segment_ids is not None:
      visible = visible & _same_segment(segment_ids, segment_ids)  # [B, T, T]
    bias = _mask_bias(visible[:, None]) + self.relpos_bias(positions, positions)  # [B, H, T, T]
    x = self.dropout(x, deterministic=deterministic)
    for i, layer in enumerate(self.layers):
      layer_adapters = sites.layer(adapters, "encoder", i)
      x = _per_layer_prompt(x, layer_adapters.get("hidden"), joined)
      x = layer(*_positional(EncoderLayer, x=x, bias=bias, adapters=layer_adapters, deterministic=deterministic))
    return self.dropout(self.encoder_norm(x), deterministic=deterministic)


class Decoder(nn.Module):
  """The causal stack (with cross-attention unless decoder-only) and the logits."""

  config: T5Config
  token_embedder: Embed

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.relpos_bias = RelativePositionBias(
      cfg.num_heads,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      False,
      param_dtype=cfg.parameter_dtype,
    )
    layer = _layer_class(DecoderLayer, cfg)
    self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_decoder_layers)]
    self.decoder_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    if not cfg.logits_via_embedding:
      self.logits_dense = Dense(cfg.vocab_size, ("embed", "vocab"), fan_in_init(cfg.emb_dim), **dt, float32_output=True)

  def _logits(self, y: Array) -> Array:
    if self.config.logits_via_embedding:
      # T5 1.0 ties the output to the embedding and rescales by d_model^-0.5.
      return self.token_embedder.attend(y * self.config.emb_dim**-0.5)
    return self.logits_dense(y)

  def __call__(
    self,
    x: Array,
    encoded: Array | None,
    encoder_mask: Array | None,
    self_visible: Array | None,
    adapters: Adapters | None,
    deterministic: bool,
    decode_position: Array | None = None,
    init_cache_length: int | None = None,
    output_positions: Array | None = None,
    cache_rows: Array | None = None,
  ) -> Array:
    """Runs the stack.

    Args:
      x: [B, T, embed] embedded decoder inputs.
      encoded: [B, Te, embed] encoder outputs (None when decoder-only, or when decoding).
      encoder_mask: bool [B, Te] real encoder positions, or [B, T, Te] the encoder positions each decoder
        position sees (packed rows); None when decoder-only.
      self_visible: bool [B|1, 1, T, Tk] which keys each query may see (causal,
        padding); Tk is the cache length when decoding.
      adapters: optional tuned vectors (the "decoder" site is read here).
      deterministic: disable dropout.
      decode_position: when decoding, the position (cache slot) of x's first token: int scalar, or int [B]
        (each row its own).
      init_cache_length: create the decode cache with this many slots instead
        of computing (the cross-attention cache is filled from `encoded`).
      output_positions: optional int [B, K]: compute logits at these positions
        only (prompt positions need none).
      cache_rows: when decoding, optional int [B]: each row's row of a cache that holds more (`T5.decode`).

    Returns:
      float32 logits [B, T, vocab] ([B, K, vocab] with `output_positions`).
    """
    decode = decode_position is not None
    cross_bias = None
    if encoder_mask is not None:
      cross_visible = encoder_mask[:, None, None, :] if encoder_mask.ndim == 2 else encoder_mask[:, None]
      cross_bias = _mask_bias(cross_visible)  # [B, 1, 1|T, Te]
    if init_cache_length is not None:
      self_bias = None
    else:
      start = jnp.asarray(decode_position if decode else 0)
      query_positions = start[..., None] + jnp.arange(x.shape[1])  # [T], or [B, T] with per-row positions
      self_bias = _mask_bias(self_visible) + self.relpos_bias(query_positions, jnp.arange(self_visible.shape[-1]))
    x = self.dropout(x, deterministic=deterministic)
    for i, layer in enumerate(self.layers):
      arguments = _positional(
        DecoderLayer,
        x=x,
        encoded=encoded,
        self_bias=self_bias,
        cross_bias=cross_bias,
        adapters=sites.layer(adapters, "decoder", i),
        decode=decode,
        cache_index=decode_position,
        cache_rows=cache_rows,
        init_cache_length=init_cache_length,
        deterministic=deterministic,
      )
      x = layer(*arguments)
    if output_positions is not None:
      x = jnp.take_along_axis(x, output_positions[..., None], axis=1)  # [B, K, embed]
    y = self.dropout(self.decoder_norm(x), deterministic=deterministic)
    return self._logits(y).astype(jnp.float32)


class T5(nn.Module):
  """T5 encoder-decoder (or decoder-only when `config.decoder_only`).

  Methods: `__call__` (teacher-forced logits), `encode`, `decode`,
  `init_cache` and `prefill` (for the decoding loop in `prompt_tuning.decoding`).

  The tuned vectors arrive as `adapters` (`prompt_tuning.models.adapters`);
  `prompt=`, `prompt_lengths=` and `prefix=` are shorthands merged into it.
  Where the prompt joins the input is the `prompt_combination` argument of
  `__call__`, `encode` and `prefill` (see `prompt_tuning.combine`): a property
  of the call, not of the frozen module, so one module serves every mode.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, **_dtypes(cfg))
    if not cfg.decoder_only:
      self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, self.token_embedder)

  def _adapters(self, adapters: Adapters | None, prompt=None, prefix=None, prompt_lengths=None) -> Adapters:
    tree = sites.from_keywords(prompt, prefix, prompt_lengths, adapters)
    sites.check(tree, self.config)
    return tree

  def _join(
    self, tokens: Array, real: Array, adapters: Adapters, mode: str, segment_ids: Array | None = None, **kwargs
  ) -> combine.Joined:
    """The embedded tokens joined with the "input" site's prompt (if any); once per segment of packed rows."""
    site = adapters.get("input", {})
    if segment_ids is not None:
      return combine.join_packed(
        site.get("prompt"),
        self.token_embedder(jnp.maximum(tokens, 0)),  # slots (negative ids) look up id 0; the prompt replaces them
        tokens,
        segment_ids,
        mode=mode,
        prompt_lengths=site.get("prompt_lengths"),
      )
    return combine.join(
      site.get("prompt"),
      self.token_embedder(tokens),
      real,
      mode=mode,
      tokens=tokens,
      prompt_lengths=site.get("prompt_lengths"),
      **kwargs,
    )

  def encode(
    self,
    encoder_input_tokens: Array,
    adapters: Adapters | None = None,
    enable_dropout: bool = False,
    prompt_combination: str = combine.DEFAULT_MODE,
    *,
    prompt: Array | None = None,
    prefix: Prefix | None = None,
    prompt_lengths: Array | None = None,
    encoder_segment_ids: Array | None = None,
  ) -> tuple[Array, Array]:
    """Runs the encoder once.

    Args:
      encoder_input_tokens: int [B, Te]; 0 is padding. Packed rows (with `encoder_segment_ids`): each segment's
        tokens, then P `combine.PROMPT_SLOT` tokens for its prompt (P: the prompt's length; none without one).
      adapters: optional tuned vectors by site (the "input" and "encoder" sites are used here).
      enable_dropout: training mode.
      prompt_combination: where the prompt joins the input (`combine.MODES`).
      prompt: shorthand for adapters["input"]["prompt"]: [P, embed] or [B, P, embed].
      prefix: shorthand for the prefix sites (only "encoder" is used here).
      prompt_lengths: shorthand for adapters["input"]["prompt_lengths"]: int [B].
      encoder_segment_ids: int [B, Te] for packed rows (seqio's, 0: padding); attention stays in each segment.

    Returns:
      (encoded [B, P + Te, embed], encoder_mask bool [B, P + Te]); packed: [B, Te, embed] and [B, Te], each
      position in its segment (the segment ids of the inputs are those of the joined positions).
    """
    if self.config.decoder_only:
      raise ValueError("A decoder-only model has no encoder; pass encoder_input_tokens=None.")
    adapters = self._adapters(adapters, prompt, prefix, prompt_lengths)
    tokens = jnp.asarray(encoder_input_tokens)
    joined = self._join(tokens, tokens > 0, adapters, prompt_combination, encoder_segment_ids)
    encoded = self.encoder(joined.embedded, joined.mask, adapters, not enable_dropout, joined, encoder_segment_ids)
    return encoded, joined.mask

  def decode(
    self,
    encoded: Array | None,
    encoder_mask: Array | None,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    adapters: Adapters | None = None,
    decode_position: Array | None = None,
    enable_dropout: bool = False,
    decoder_key_mask: Array | None = None,
    *,
    prefix: Prefix | None = None,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    cache_rows: Array | None = None,
  ) -> Array:
    """Decoder logits, teacher-forced, or one step through the cache.

    Args:
      encoded: [B, Te, embed] from `encode` (not needed when decoding: the
        cache holds the projected encoder keys and values).
      encoder_mask: bool [B, Te] from `encode`.
      decoder_input_tokens: int [B, Td]; when decoding, the tokens at
        positions decode_position .. decode_position + Td - 1.
      decoder_target_tokens: int [B, Td]; positions with 0 are padding.
      adapters: optional tuned vectors by site (the "decoder" site is used here).
      decode_position: decode through the cache made by `init_cache` (call
        with `mutable=["cache"]`): an int scalar, every row at that position,
        or int [B], each row at its own (a continuous batch: rows that joined
        at different steps, each writing its own cache slot and seeing only
        its own earlier positions).
      enable_dropout: training mode.
      decoder_key_mask: when decoding, optional bool [B, cache length]: the
        cache slots that hold real keys (from `prefill`).
      prefix: shorthand for the prefix sites ("decoder" and "cross" are used here).
      encoder_segment_ids, decoder_segment_ids: int [B, Te] and [B, Td] of packed rows (teacher forcing only):
        decoder segment s sees its own earlier positions and encoder segment s.
      cache_rows: when decoding with a position per row, optional int [B]: the cache row each row reads and
        writes, in a cache made for more rows (a server's slots, of which the batch is the running ones: the
        other rows are neither computed nor changed); ids past the cache's rows are padding rows, which write
        nothing. encoder_mask, decoder_key_mask and the adapters are the batch's rows.

    Returns:
      float32 logits [B, Td, vocab].

    Raises:
      ValueError: one of the segment ids without the other, or with `decode_position`; cache_rows without a
        position per row.
    """
    if (encoder_segment_ids is None) != (decoder_segment_ids is None) or (
      decoder_segment_ids is not None and decode_position is not None
    ):
      raise ValueError(
        "packed rows need both encoder_segment_ids and decoder_segment_ids, and only in teacher forcing "
        "(decoding and scoring run on unpacked rows)."
      )
    if cache_rows is not None and (decode_position is None or jnp.ndim(decode_position) != 1):
      raise ValueError("cache_rows selects cache rows for a decode step: give decode_position per row, int [B].")
    adapters = self._adapters(adapters, prefix=prefix)
    tokens = jnp.asarray(decoder_input_tokens)
    length = tokens.shape[1]
    if decode_position is not None:
      cache_length = self._cache_length()
      query_positions = jnp.asarray(decode_position)[..., None] + jnp.arange(length)  # [Td], or [B, Td]
      visible = jnp.arange(cache_length) <= query_positions[..., None]  # [Td, L], or [B, Td, L]
      visible = visible[:, None] if visible.ndim == 3 else visible[None, None]  # [B|1, 1, Td, L]
      if decoder_key_mask is not None:
        visible = visible & jnp.asarray(decoder_key_mask, bool)[:, None, None, :]  # [B, 1, Td, L]
    else:
      visible = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, Td, Td]
      if decoder_target_tokens is not None:
        visible = visible & (jnp.asarray(decoder_target_tokens) > 0)[:, None, None, :]
      if decoder_segment_ids is not None:
        decoder_segment_ids = jnp.asarray(decoder_segment_ids, jnp.int32)
        visible = visible & _same_segment(decoder_segment_ids, decoder_segment_ids)[:, None]  # [B, 1, Td, Td]
        encoder_segment_ids = jnp.asarray(encoder_segment_ids, jnp.int32)
        encoder_mask = encoder_mask[:, None, :] & _same_segment(decoder_segment_ids, encoder_segment_ids)
    x = self.token_embedder(tokens)
    return self.decoder(
      x,
      encoded,
      encoder_mask,
      visible,
      adapters,
      not enable_dropout,
      decode_position=decode_position,
      cache_rows=None if cache_rows is None else jnp.asarray(cache_rows, jnp.int32),
    )

  def _cache_length(self) -> int:
    cache = self.variables.get("cache")
    if not cache:
      raise ValueError("Decoding needs a cache: call T5.init_cache (with mutable=['cache']) first.")
    return cache["decoder"]["layers_0"]["self_attention"]["cached_key"].shape[2]  # [B, H, L, Dh]

  def init_cache(
    self,
    encoded: Array | None,
    encoder_mask: Array | None,
    batch: int,
    max_decode_length: int,
    adapters: Adapters | None = None,
    *,
    prefix: Prefix | None = None,
  ) -> None:
    """Creates the decode cache (call with `mutable=["cache"]`).

    Args:
      encoded: [B, Te, embed] encoder outputs, projected once into each
        cross-attention's keys and values (None when decoder-only).
      encoder_mask: bool [B, Te] from `encode` (None when decoder-only).
      batch: rows being decoded.
      max_decode_length: decoder positions the cache can hold (decoder-only:
        the prefilled inputs, prompt included, plus the decoded positions).
      adapters: the tuned vectors by site, the same as `decode` then takes: the cross-attention leaves that apply
        before the cache (IA3's key/value scales, `prompt_tuning.models.adapters`) are applied to the cached
        keys and values here, once, and not again at each step.
      prefix: shorthand for the prefix sites, merged into `adapters`.
    """
    adapters = self._adapters(adapters, prefix=prefix)
    x = jnp.zeros((batch, 1, self.config.emb_dim), self.config.activation_dtype)
    self.decoder(x, encoded, encoder_mask, None, adapters, True, init_cache_length=max_decode_length)

  def prefill(
    self,
    decoder_input_tokens: Array,
    adapters: Adapters | None = None,
    prompt_combination: str = combine.DEFAULT_MODE,
    *,
    prompt: Array | None = None,
    prefix: Prefix | None = None,
    prompt_lengths: Array | None = None,
  ) -> tuple[Array, Array]:
    """Decoder-only: writes a prefix LM's inputs (and prompt) into the cache in one pass.

    The inputs are fully visible to each other, as in teacher forcing with
    `decoder_causal_attention` over them. Each row is right-justified (see
    `combine.right_justify`) so all rows continue at slot T' = P + Ti, the
    joined length. Call after `init_cache(None, None, B, T' + max_decode_length)`
    with `mutable=["cache"]`, then `decode` from `decode_position=T'` with
    `decoder_key_mask`.

    Args:
      decoder_input_tokens: int [B, Ti]: the start token 0, then the inputs,
        then padding (0); position 0 always counts as real.
      adapters: optional tuned vectors by site ("input" and "decoder").
      prompt_combination: where the prompt joins the inputs (`combine.MODES`).
      prompt, prefix, prompt_lengths: shorthands merged into `adapters`.

    Returns:
      (logits [B, vocab] of the first token to generate, decoder_key_mask
      bool [B, cache length] to pass to every following `decode` step).
    """
    if not self.config.decoder_only:
      raise ValueError("prefill() is for decoder-only models; an encoder-decoder model runs encode() instead.")
    adapters = self._adapters(adapters, prompt, prefix, prompt_lengths)
    tokens = jnp.asarray(decoder_input_tokens)
    batch, length = tokens.shape
    real = (jnp.arange(length) == 0)[None, :] | (tokens > 0)  # [B, Ti]
    joined, _ = combine.right_justify(self._join(tokens, real, adapters, prompt_combination))
    total, cache_length = joined.mask.shape[1], self._cache_length()
    if cache_length < total:
      raise ValueError(f"The cache holds {cache_length} positions but the prompt and inputs take {total}.")
    # The position whose output predicts the first target: the last input token.
    last_input = jnp.sum(real, axis=1) - 1
    next_position = jnp.take_along_axis(joined.token_positions, last_input[:, None], axis=1)  # [B, 1]
    key_mask = jnp.concatenate([joined.mask, jnp.ones((batch, cache_length - total), bool)], axis=1)  # [B, L]
    visible = (key_mask & (jnp.arange(cache_length) < total)[None, :])[:, None, None, :]  # [B, 1, 1, L]
    visible = jnp.broadcast_to(visible, (batch, 1, total, cache_length))
    logits = self.decoder(
      joined.embedded, None, None, visible, adapters, True, decode_position=0, output_positions=next_position
    )
    return logits[:, 0], key_mask

  def __call__(
    self,
    encoder_input_tokens: Array | None,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    *,
    adapters: Adapters | None = None,
    prompt: Array | None = None,
    prefix: Prefix | None = None,
    prompt_lengths: Array | None = None,
    decoder_causal_attention: Array | None = None,
    enable_dropout: bool = False,
    prompt_combination: str = combine.DEFAULT_MODE,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
  ) -> Array:
    """Teacher-forced logits [B, Td, vocab] (float32).

    For an encoder-decoder model the prompt joins the encoder input. For a
    decoder-only model (`encoder_input_tokens=None`) it joins the decoder
    input as fully visible positions; `decoder_causal_attention` (int/bool
    [B, Td], 1 on the inputs part of a prefix-LM example) makes those
    positions fully visible to each other, and is where the suffix modes put
    the prompt. Logits are returned for the decoder positions only, not the
    prompt's. `adapters` carries the tuned vectors by site; `prompt`,
    `prompt_lengths` (int [B], rows may use fewer prompt vectors than P) and
    `prefix` are shorthands merged into it. `prompt_combination`
    (`combine.MODES`, default "prefix") says where the prompt goes.
    `encoder_segment_ids` and `decoder_segment_ids` (int [B, Te], [B, Td])
    mark packed rows (see the module docstring); encoder-decoder models only.
    """
    adapters = self._adapters(adapters, prompt, prefix, prompt_lengths)
    if self.config.decoder_only:
      if encoder_segment_ids is not None or decoder_segment_ids is not None:
        raise ValueError(
          "packed rows (segment ids) are for encoder-decoder models; this T5 is decoder-only (a prefix LM): "
          "pass unpacked rows (PACK = False)."
        )
      if encoder_input_tokens is not None:
        raise ValueError(
          "This T5 is decoder-only: pass encoder_input_tokens=None and the whole sequence as decoder input."
        )
      return self._decoder_only(
        decoder_input_tokens,
        decoder_target_tokens,
        adapters,
        prompt_combination,
        decoder_causal_attention,
        enable_dropout,
      )
    encoded, encoder_mask = self.encode(
      encoder_input_tokens, adapters, enable_dropout, prompt_combination, encoder_segment_ids=encoder_segment_ids
    )
    return self.decode(
      encoded,
      encoder_mask,
      decoder_input_tokens,
      decoder_target_tokens,
      adapters,
      None,
      enable_dropout,
      encoder_segment_ids=encoder_segment_ids,
      decoder_segment_ids=decoder_segment_ids,
    )

  def _decoder_only(self, tokens, targets, adapters, mode, causal_attention, enable_dropout):
    """The prefix LM's logits at the token positions."""
    tokens = jnp.asarray(tokens)
    batch, length = tokens.shape
    real = jnp.ones((batch, length), bool) if targets is None else jnp.asarray(targets) > 0
    full = jnp.zeros((batch, length), bool) if causal_attention is None else jnp.asarray(causal_attention) > 0
    if "prompt" in adapters.get("input", {}) and mode.startswith("suffix") and causal_attention is None:
      raise ValueError(
        f"prompt_combination={mode!r} puts the prompt after the inputs part of a prefix LM; pass "
        "decoder_causal_attention (1 on the inputs part) to say where it ends."
      )
    joined = self._join(tokens, real, adapters, mode, input_length=jnp.sum(full, axis=1))
    full = combine.spread_tokens(full, joined, True)  # [B, T']: prompt positions fully visible
    total = full.shape[1]
    causal = jnp.tril(jnp.ones((total, total), bool))[None]  # [1, T', T']
    visible = (causal | (full[:, :, None] & full[:, None, :])) & joined.mask[:, None, :]
    return self.decoder(
      joined.embedded,
      None,
      None,
      visible[:, None],
      adapters,
      not enable_dropout,
      output_positions=joined.token_positions,
    )


def dummy_inputs(config: T5Config, batch: int = 1, length: int = 1) -> dict[str, Array | None]:
  tokens = jnp.ones((batch, length), jnp.int32)
  return {
    "encoder_input_tokens": None if config.decoder_only else tokens,
    "decoder_input_tokens": tokens,
  }


def init_params(config: T5Config, rng: Array) -> dict[str, Any]:
  """Random parameters (unboxed), e.g. for tests or pretraining from scratch.

  Compiled as one program (per config): `T5.init` runs the model's forward on dummy inputs, which op by op would
  compile each of its hundreds of operations on its own (about 1.6x the CPU time for a tiny model, more for a large
  one); under jit the forward is traced and dropped, since only the parameters are returned.
  """
  return _init_params(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: T5Config, rng: Array) -> dict[str, Any]:
  variables = T5(config).init(rng, **dummy_inputs(config))
  return nn.unbox(variables["params"])


@functools.cache
def _abstract_variables(config: T5Config):
  return jax.eval_shape(lambda: T5(config).init(jax.random.key(0), **dummy_inputs(config)))


def param_shapes(config: T5Config) -> dict[str, Any]:
  """The exact parameter tree of `config` as jax.ShapeDtypeStruct leaves; allocates nothing."""
  return nn.unbox(_abstract_variables(config)["params"])


def param_logical_axes(config: T5Config) -> dict[str, Any]:
  """The logical axis names (a PartitionSpec of names) of every parameter."""
  return nn.get_partition_spec(_abstract_variables(config)["params"])
