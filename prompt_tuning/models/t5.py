"""The T5 model (1.0, 1.1, mT5, LM-adapted; encoder-decoder or decoder-only) in Flax linen.

The frozen backbone receives the trainable vectors as *arguments*:

    logits = T5(config).apply({"params": frozen}, encoder_input_tokens, decoder_input_tokens,
                              decoder_target_tokens=None, prompt=soft_prompt, prefix=kv_prefixes)

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
  `prompt_tuning.prefixes` for why).

Parameter names follow the T5X/Flaxformer tree (`encoder/layers_0/attention/
query/kernel`, `decoder/logits_dense/kernel`, `token_embedder/embedding`, ...),
so T5X checkpoints map onto it without renaming.

Padding: encoder positions with token 0 are masked as keys; decoder positions
are real where `decoder_target_tokens > 0` (all real when it is not given).
Padded query positions still produce (meaningless) outputs, as in Hugging Face
T5; the loss must weight them out.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from prompt_tuning import combine
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
Prefix = dict[str, dict[str, Array]]
LayerPrefix = tuple[Array | None, Array | None, Array | None]  # (key, value, mask) of one layer

PREFIX_SITES = ("encoder", "decoder", "cross")


def _dtypes(config: T5Config) -> dict[str, Any]:
  return {"dtype": config.activation_dtype, "param_dtype": config.parameter_dtype}


def _mask_bias(mask: Array) -> Array:
  """Boolean visibility [B, 1, Tq, Tk] (or broadcastable) -> additive bias."""
  return jnp.where(mask, 0.0, MASK_VALUE).astype(jnp.float32)


def _layer_prefix(prefix: Prefix | None, site: str, layer: int) -> LayerPrefix:
  """(key, value, mask) of one layer at one site; Nones when the site has no prefix."""
  if not prefix or site not in prefix or prefix[site] is None:
    return None, None, None
  kv = prefix[site]
  return kv["key"][layer], kv["value"][layer], kv.get("mask")


def _check_prefix(prefix: Prefix | None, config: T5Config) -> None:
  if not prefix:
    return
  sites = ("decoder",) if config.decoder_only else PREFIX_SITES
  unknown = set(prefix) - set(sites)
  if unknown:
    raise ValueError(f"Unknown prefix sites {sorted(unknown)} for this model; use any of {sites}.")
  heads, head_dim = config.num_heads, config.head_dim
  for site, kv in prefix.items():
    if kv is None:
      continue
    layers = config.num_encoder_layers if site == "encoder" else config.num_decoder_layers
    key, value, mask = kv["key"], kv["value"], kv.get("mask")
    if (
      key.ndim not in (4, 5)
      or key.shape[0] != layers
      or key.shape[-2:] != (heads, head_dim)
      or value.shape != key.shape
    ):
      raise ValueError(
        f"prefix[{site!r}] has key {key.shape} and value {value.shape}; expected [{layers}, P, {heads}, {head_dim}] "
        f"or [{layers}, batch, P, {heads}, {head_dim}] (layers, [batch,] prefix length, heads, head_dim) for both."
      )
    if mask is not None and (mask.ndim not in (1, 2) or mask.shape[-1] != key.shape[-3]):
      raise ValueError(
        f"prefix[{site!r}]['mask'] has shape {mask.shape}; expected [P] or [batch, P] with P = {key.shape[-3]} "
        "(which prefix vectors each row uses)."
      )


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
    """Logits against the embedding table: [..., embed] -> [..., vocab]."""
    return jnp.einsum("...d,vd->...v", x, self.embedding.astype(self.dtype))


class EncoderLayer(nn.Module):
  config: T5Config

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.pre_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.attention = Attention(cfg.num_heads, cfg.head_dim, cfg.emb_dim, cfg.dropout_rate, **dt)
    self.pre_mlp_layer_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.mlp = MLP(cfg.mlp_dim, cfg.emb_dim, cfg.mlp_activations, cfg.dropout_rate, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, x, bias, layer_prefix: LayerPrefix, deterministic):
    prefix_key, prefix_value, prefix_mask = layer_prefix
    h = self.pre_attention_layer_norm(x)
    h = self.attention(
      h,
      h,
      bias,
      prefix_key=prefix_key,
      prefix_value=prefix_value,
      prefix_mask=prefix_mask,
      deterministic=deterministic,
    )
    x = x + self.dropout(h, deterministic=deterministic)
    h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=deterministic)
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
    self, x, encoded, self_bias, cross_bias, layer_prefix, decode, cache_index, init_cache_length, deterministic
  ):
    (self_key, self_value, self_mask), (cross_key, cross_value, cross_mask) = layer_prefix
    h = self.pre_self_attention_layer_norm(x)
    h = self.self_attention(
      h,
      h,
      self_bias,
      prefix_key=self_key,
      prefix_value=self_value,
      prefix_mask=self_mask,
      decode=decode,
      cache_index=cache_index,
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
        prefix_key=cross_key,
        prefix_value=cross_value,
        prefix_mask=cross_mask,
        decode=decode,
        init_cache_length=None if init_cache_length is None else 0,
        deterministic=deterministic,
      )
      x = x + self.dropout(h, deterministic=deterministic)
    h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=deterministic)
    x = x + self.dropout(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


def _layer_class(cls, config: T5Config):
  # Python-valued positional arguments (flags, lengths; self is 0) stay static under remat.
  if not config.remat:
    return cls
  static = (4,) if cls is EncoderLayer else (6, 8, 9)
  return nn.remat(cls, static_argnums=static, prevent_cse=True)


class Encoder(nn.Module):
  """The bidirectional stack over embedded (and prompt-joined) inputs."""

  config: T5Config

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.relpos_bias = RelativePositionBias(
      cfg.num_heads, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, True, **dt
    )
    layer = _layer_class(EncoderLayer, cfg)
    self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_encoder_layers)]
    self.encoder_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, x: Array, mask: Array, prefix: Prefix | None, deterministic: bool) -> Array:
    """x: [B, T, embed] embedded inputs; mask: bool [B, T]. Returns [B, T, embed]."""
    positions = jnp.arange(x.shape[1])
    bias = _mask_bias(mask[:, None, None, :]) + self.relpos_bias(positions, positions)  # [B, H, T, T]
    x = self.dropout(x, deterministic=deterministic)
    for i, layer in enumerate(self.layers):
      x = layer(x, bias, _layer_prefix(prefix, "encoder", i), deterministic)
    return self.dropout(self.encoder_norm(x), deterministic=deterministic)


class Decoder(nn.Module):
  """The causal stack (with cross-attention unless decoder-only) and the logits."""

  config: T5Config
  token_embedder: Embed

  def setup(self):
    cfg, dt = self.config, _dtypes(self.config)
    self.relpos_bias = RelativePositionBias(
      cfg.num_heads, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, False, **dt
    )
    layer = _layer_class(DecoderLayer, cfg)
    self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_decoder_layers)]
    self.decoder_norm = RMSNorm(cfg.layer_norm_epsilon, **dt)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    if not cfg.logits_via_embedding:
      self.logits_dense = Dense(cfg.vocab_size, ("embed", "vocab"), fan_in_init(cfg.emb_dim), **dt)

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
    prefix: Prefix | None,
    deterministic: bool,
    decode_position: Array | None = None,
    init_cache_length: int | None = None,
    output_positions: Array | None = None,
  ) -> Array:
    """Runs the stack.

    Args:
      x: [B, T, embed] embedded decoder inputs.
      encoded: [B, Te, embed] encoder outputs (None when decoder-only, or when decoding).
      encoder_mask: bool [B, Te] real encoder positions (None when decoder-only).
      self_visible: bool [B|1, 1, T, Tk] which keys each query may see (causal,
        padding); Tk is the cache length when decoding.
      prefix: optional per-layer prefixes.
      deterministic: disable dropout.
      decode_position: when decoding, the position (cache slot) of x's first token.
      init_cache_length: create the decode cache with this many slots instead
        of computing (the cross-attention cache is filled from `encoded`).
      output_positions: optional int [B, K]: compute logits at these positions
        only (prompt positions need none).

    Returns:
      float32 logits [B, T, vocab] ([B, K, vocab] with `output_positions`).
    """
    decode = decode_position is not None
    cross_bias = None if encoder_mask is None else _mask_bias(encoder_mask[:, None, None, :])
    if init_cache_length is not None:
      self_bias = None
    else:
      start = decode_position if decode else 0
      query_positions = start + jnp.arange(x.shape[1])
      self_bias = _mask_bias(self_visible) + self.relpos_bias(query_positions, jnp.arange(self_visible.shape[-1]))
    x = self.dropout(x, deterministic=deterministic)
    for i, layer in enumerate(self.layers):
      layer_prefix = (_layer_prefix(prefix, "decoder", i), _layer_prefix(prefix, "cross", i))
      x = layer(
        x, encoded, self_bias, cross_bias, layer_prefix, decode, decode_position, init_cache_length, deterministic
      )
    if output_positions is not None:
      x = jnp.take_along_axis(x, output_positions[..., None], axis=1)  # [B, K, embed]
    y = self.dropout(self.decoder_norm(x), deterministic=deterministic)
    return self._logits(y).astype(jnp.float32)


class T5(nn.Module):
  """T5 encoder-decoder (or decoder-only when `config.decoder_only`).

  Methods: `__call__` (teacher-forced logits), `encode`, `decode`,
  `init_cache` and `prefill` (for the decoding loop in `prompt_tuning.decoding`).

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

  def encode(
    self,
    encoder_input_tokens: Array,
    prompt: Array | None = None,
    prefix: Prefix | None = None,
    enable_dropout: bool = False,
    prompt_combination: str = combine.DEFAULT_MODE,
    prompt_lengths: Array | None = None,
  ) -> tuple[Array, Array]:
    """Runs the encoder once.

    Args:
      encoder_input_tokens: int [B, Te]; 0 is padding.
      prompt: optional [P, embed] or [B, P, embed] soft prompt.
      prefix: optional prefixes (only the "encoder" site is used here).
      enable_dropout: training mode.
      prompt_combination: where the prompt joins the input (`combine.MODES`).
      prompt_lengths: optional int [B], prompt vectors used by each row.

    Returns:
      (encoded [B, P + Te, embed], encoder_mask bool [B, P + Te]).
    """
    if self.config.decoder_only:
      raise ValueError("A decoder-only model has no encoder; pass encoder_input_tokens=None.")
    _check_prefix(prefix, self.config)
    tokens = jnp.asarray(encoder_input_tokens)
    joined = combine.join(
      prompt,
      self.token_embedder(tokens),
      tokens > 0,
      mode=prompt_combination,
      tokens=tokens,
      prompt_lengths=prompt_lengths,
    )
    encoded = self.encoder(joined.embedded, joined.mask, prefix, deterministic=not enable_dropout)
    return encoded, joined.mask

  def decode(
    self,
    encoded: Array | None,
    encoder_mask: Array | None,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    prefix: Prefix | None = None,
    decode_position: Array | None = None,
    enable_dropout: bool = False,
    decoder_key_mask: Array | None = None,
  ) -> Array:
    """Decoder logits, teacher-forced, or one step through the cache.

    Args:
      encoded: [B, Te, embed] from `encode` (not needed when decoding: the
        cache holds the projected encoder keys and values).
      encoder_mask: bool [B, Te] from `encode`.
      decoder_input_tokens: int [B, Td]; when decoding, the tokens at
        positions decode_position .. decode_position + Td - 1.
      decoder_target_tokens: int [B, Td]; positions with 0 are padding.
      prefix: optional prefixes ("decoder" and "cross" sites).
      decode_position: int scalar; decode through the cache made by
        `init_cache` (call with `mutable=["cache"]`).
      enable_dropout: training mode.
      decoder_key_mask: when decoding, optional bool [B, cache length]: the
        cache slots that hold real keys (from `prefill`).

    Returns:
      float32 logits [B, Td, vocab].
    """
    _check_prefix(prefix, self.config)
    tokens = jnp.asarray(decoder_input_tokens)
    length = tokens.shape[1]
    if decode_position is not None:
      cache_length = self._cache_length()
      query_positions = decode_position + jnp.arange(length)
      visible = (jnp.arange(cache_length)[None, :] <= query_positions[:, None])[None, None]  # [1, 1, Td, L]
      if decoder_key_mask is not None:
        visible = visible & jnp.asarray(decoder_key_mask, bool)[:, None, None, :]  # [B, 1, Td, L]
    else:
      visible = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, Td, Td]
      if decoder_target_tokens is not None:
        visible = visible & (jnp.asarray(decoder_target_tokens) > 0)[:, None, None, :]
    x = self.token_embedder(tokens)
    return self.decoder(x, encoded, encoder_mask, visible, prefix, not enable_dropout, decode_position=decode_position)

  def _cache_length(self) -> int:
    cache = self.variables.get("cache")
    if not cache:
      raise ValueError("Decoding needs a cache: call T5.init_cache (with mutable=['cache']) first.")
    return cache["decoder"]["layers_0"]["self_attention"]["cached_key"].shape[1]

  def init_cache(self, encoded: Array | None, encoder_mask: Array | None, batch: int, max_decode_length: int) -> None:
    """Creates the decode cache (call with `mutable=["cache"]`).

    Args:
      encoded: [B, Te, embed] encoder outputs, projected once into each
        cross-attention's keys and values (None when decoder-only).
      encoder_mask: bool [B, Te] from `encode` (None when decoder-only).
      batch: rows being decoded.
      max_decode_length: decoder positions the cache can hold (decoder-only:
        the prefilled inputs, prompt included, plus the decoded positions).
    """
    x = jnp.zeros((batch, 1, self.config.emb_dim), self.config.activation_dtype)
    self.decoder(x, encoded, encoder_mask, None, None, True, init_cache_length=max_decode_length)

  def prefill(
    self,
    decoder_input_tokens: Array,
    prompt: Array | None = None,
    prefix: Prefix | None = None,
    prompt_combination: str = combine.DEFAULT_MODE,
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
      prompt: optional [P, embed] or [B, P, embed] soft prompt.
      prefix: optional prefixes (the "decoder" site).
      prompt_combination: where the prompt joins the inputs (`combine.MODES`).
      prompt_lengths: optional int [B], prompt vectors used by each row.

    Returns:
      (logits [B, vocab] of the first token to generate, decoder_key_mask
      bool [B, cache length] to pass to every following `decode` step).
    """
    if not self.config.decoder_only:
      raise ValueError("prefill() is for decoder-only models; an encoder-decoder model runs encode() instead.")
    _check_prefix(prefix, self.config)
    tokens = jnp.asarray(decoder_input_tokens)
    batch, length = tokens.shape
    real = (jnp.arange(length) == 0)[None, :] | (tokens > 0)  # [B, Ti]
    joined = combine.join(
      prompt, self.token_embedder(tokens), real, mode=prompt_combination, tokens=tokens, prompt_lengths=prompt_lengths
    )
    joined, _ = combine.right_justify(joined)
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
      joined.embedded, None, None, visible, prefix, True, decode_position=0, output_positions=next_position
    )
    return logits[:, 0], key_mask

  def __call__(
    self,
    encoder_input_tokens: Array | None,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    *,
    prompt: Array | None = None,
    prefix: Prefix | None = None,
    decoder_causal_attention: Array | None = None,
    enable_dropout: bool = False,
    prompt_combination: str = combine.DEFAULT_MODE,
    prompt_lengths: Array | None = None,
  ) -> Array:
    """Teacher-forced logits [B, Td, vocab] (float32).

    For an encoder-decoder model the prompt joins the encoder input. For a
    decoder-only model (`encoder_input_tokens=None`) it joins the decoder
    input as fully visible positions; `decoder_causal_attention` (int/bool
    [B, Td], 1 on the inputs part of a prefix-LM example) makes those
    positions fully visible to each other, and is where the suffix modes put
    the prompt. Logits are returned for the decoder positions only, not the
    prompt's. `prompt_combination` (`combine.MODES`, default "prefix") says
    where the prompt goes; `prompt_lengths` (int [B]) lets rows use fewer
    prompt vectors than P (0: none).
    """
    if self.config.decoder_only:
      if encoder_input_tokens is not None:
        raise ValueError(
          "This T5 is decoder-only: pass encoder_input_tokens=None and the whole sequence as decoder input."
        )
      prompt_args = (prompt, prompt_lengths, prompt_combination)
      return self._decoder_only(
        decoder_input_tokens, decoder_target_tokens, prompt_args, prefix, decoder_causal_attention, enable_dropout
      )
    encoded, encoder_mask = self.encode(
      encoder_input_tokens, prompt, prefix, enable_dropout, prompt_combination, prompt_lengths
    )
    return self.decode(encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens, prefix, None, enable_dropout)

  def _decoder_only(self, tokens, targets, prompt_args, prefix, causal_attention, enable_dropout):
    """The prefix LM's logits at the token positions; prompt_args = (prompt, prompt_lengths, combination mode)."""
    prompt, prompt_lengths, mode = prompt_args
    _check_prefix(prefix, self.config)
    tokens = jnp.asarray(tokens)
    batch, length = tokens.shape
    real = jnp.ones((batch, length), bool) if targets is None else jnp.asarray(targets) > 0
    full = jnp.zeros((batch, length), bool) if causal_attention is None else jnp.asarray(causal_attention) > 0
    if prompt is not None and mode.startswith("suffix") and causal_attention is None:
      raise ValueError(
        f"prompt_combination={mode!r} puts the prompt after the inputs part of a prefix LM; pass "
        "decoder_causal_attention (1 on the inputs part) to say where it ends."
      )
    joined = combine.join(
      prompt,
      self.token_embedder(tokens),
      real,
      mode=mode,
      tokens=tokens,
      input_length=jnp.sum(full, axis=1),
      prompt_lengths=prompt_lengths,
    )
    full = combine.spread_tokens(full, joined, True)  # [B, T']: prompt positions fully visible
    total = full.shape[1]
    causal = jnp.tril(jnp.ones((total, total), bool))[None]  # [1, T', T']
    visible = (causal | (full[:, :, None] & full[:, None, :])) & joined.mask[:, None, :]
    return self.decoder(
      joined.embedded, None, None, visible[:, None], prefix, not enable_dropout, output_positions=joined.token_positions
    )


def dummy_inputs(config: T5Config, batch: int = 1, length: int = 1) -> dict[str, Array | None]:
  tokens = jnp.ones((batch, length), jnp.int32)
  return {
    "encoder_input_tokens": None if config.decoder_only else tokens,
    "decoder_input_tokens": tokens,
  }


def init_params(config: T5Config, rng: Array) -> dict[str, Any]:
  """Random parameters (unboxed), e.g. for tests or pretraining from scratch."""
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
