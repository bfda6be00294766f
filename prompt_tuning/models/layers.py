"""The building blocks of T5: dense, RMS norm, relative position bias, attention, MLP.

Every parameter is declared with logical axis names, so `partitioning.py` can
map them onto a device mesh and Adafactor can factor them. Activations are
annotated with `act_*` names through `nn.with_logical_constraint`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
Initializer = Callable[..., Array]

# Added to the attention logits of keys a query may not see. Large and finite,
# so a fully masked row (a padding row) gives a uniform softmax, never NaN.
MASK_VALUE = -1e10


def normal_init(stddev: float) -> Initializer:
  return nn.initializers.normal(stddev=stddev)


def fan_in_init(fan_in: int, scale: float = 1.0) -> Initializer:
  return nn.initializers.normal(stddev=(scale / fan_in) ** 0.5)


class Dense(nn.Module):
  """A kernel-only linear layer (T5 has no biases): x @ kernel[in, out], computed in `dtype`.

  `float32_output` accumulates and returns float32 (the output logits), whatever `dtype` is.
  """

  features: int
  axes: tuple[str, str]
  kernel_init: Initializer
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  float32_output: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(self.kernel_init, self.axes),
      (x.shape[-1], self.features),
      self.param_dtype,
    )
    output_dtype = jnp.float32 if self.float32_output else None
    return jnp.einsum(
      "...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=output_dtype
    )


class RMSNorm(nn.Module):
  """T5's layer norm: rescale by the root mean square, no centering, no bias."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype
    )
    x32 = x.astype(jnp.float32)
    # The variance is always taken in float32, also for bfloat16 activations.
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def relative_position_bucket(
  relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """Maps key_position - query_position to a bucket id, as T5 does.

  Half the buckets (of each direction, when bidirectional) hold exact
  distances; the rest grow logarithmically up to `max_distance`, beyond which
  all distances share the last bucket. The arithmetic (float32 log, truncation)
  follows the Hugging Face T5 so bucket ids agree exactly.

  Args:
    relative_position: int array, key position minus query position.
    bidirectional: encoder (True) or causal decoder (False).
    num_buckets: total buckets.
    max_distance: distance at which buckets saturate.

  Returns:
    int32 array of bucket ids, same shape as `relative_position`.
  """
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # Guard log(0); those positions take the exact branch anyway.
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  log_ratio = jnp.log(safe / max_exact) / np.float32(np.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return (bucket + jnp.where(is_small, distance, large)).astype(jnp.int32)


class RelativePositionBias(nn.Module):
  """One learned scalar per (head, bucket), shared by all layers of a stack.

  Always float32: it joins the float32 attention logits, and bfloat16 would round a bias of 10 to steps of 0.06.
  """

  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """The float32 bias [1, heads, q_len, k_len] for int positions [q_len], [k_len]; with per-row query positions
    [B, q_len] (rows decoding at different positions), [B, heads, q_len, k_len]."""
    rel_embedding = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(normal_init(1.0), ("heads", "relpos_buckets")),
      (self.num_heads, self.num_buckets),
      self.param_dtype,
    )
    relative = key_positions[None, :] - query_positions[..., :, None]  # [q_len, k_len] or [B, q_len, k_len]
    buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
    # A one-hot contraction instead of a gather: cheap at these sizes and it
    # shards cleanly along heads.
    one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=jnp.float32)  # [(B,) q, k, buckets]
    bias = jnp.einsum("hb,...qkb->...hqk", rel_embedding.astype(jnp.float32), one_hot)
    return bias if query_positions.ndim == 2 else bias[None]  # [B|1, heads, q_len, k_len]


def _split_heads(x: Array, num_heads: int, head_dim: int) -> Array:
  return x.reshape(x.shape[:-1] + (num_heads, head_dim))


def _broadcast_prefix(prefix: Array, batch: int) -> Array:
  """[P, H, Dh] or [B|1, P, H, Dh] -> [B, P, H, Dh]."""
  if prefix.ndim == 3:
    prefix = prefix[None]
  return jnp.broadcast_to(prefix, (batch,) + prefix.shape[1:])


def _scale(x: Array, scale: Array | None) -> Array:
  """IA3's learned rescaling: x [B, T, ..., F] times scale [F] or [B, F] (one per row), over the trailing axis/axes."""
  if scale is None:
    return x
  features = x.shape[2:]
  scale = jnp.asarray(scale).reshape((-1, 1) + features)  # [B|1, 1, ...features]
  return x * scale.astype(x.dtype)


def _low_rank(x: Array, adapters: Mapping[str, Array], projection: str, dtype) -> Array | None:
  """LoRA's delta (x @ A) @ B of one projection, float32 [B, T, H*Dh]; None without its leaves.

  x is [B, T, D]; A ("lora_<projection>_a") [D, r] or [B, D, r] (one per row), B ("lora_<projection>_b") [r, H*Dh]
  or [B, r, H*Dh], the scaling already folded into B. Both products run in `dtype` and accumulate in float32.
  """
  a, b = adapters.get(f"lora_{projection}_a"), adapters.get(f"lora_{projection}_b")
  if a is None:
    return None
  row = "b" if a.ndim == 3 else ""
  down = jnp.einsum(
    f"btd,{row}dr->btr", x.astype(dtype), jnp.asarray(a).astype(dtype), preferred_element_type=jnp.float32
  )  # [B, T, r]
  return jnp.einsum(
    f"btr,{row}rf->btf", down.astype(dtype), jnp.asarray(b).astype(dtype), preferred_element_type=jnp.float32
  )  # [B, T, H*Dh]


def _add_low_rank(projected: Array, x: Array, adapters: Mapping[str, Array], projection: str) -> Array:
  """`projected` [B, T, H*Dh] plus LoRA's delta of `x` [B, T, D], added in float32 (unchanged without LoRA)."""
  delta = _low_rank(x, adapters, projection, projected.dtype)
  if delta is None:
    return projected
  return (projected.astype(jnp.float32) + delta).astype(projected.dtype)


# Decoding keeps the keys and values heads first, [B, H, L, Dh] (the cache's layout): a step's batched dots over
# (row, head) then read the cache as it lies. Laid out [B, L, H, Dh], as the projection makes them, XLA either
# copies the whole cache transposed every layer and step (25.8 ms of a 32-slot demo step, 68f90dd) or, written as a
# multiply and a sum, runs an elementwise loop 2.2-2.7x slower than the dot on the demo model's caches. A prefix's
# keys and values are attended to beside the cache, never joined to it (a copy of the cache per step). Logits and
# the weighted values are accumulated in float32 (the values cast back to their dtype).


def _heads_first(x: Array) -> Array:
  """[B, T, H, Dh] <-> [B, H, T, Dh]."""
  return jnp.swapaxes(x, 1, 2)


def _decode_logits(query: Array, key: Array, rows: Array | None) -> Array:
  """float32 logits [B, H, Tq, L] of `query` [B, Tq, H, Dh] against heads-first `key`: [B, H, L, Dh], or with
  `rows` (int [B], each query row's row of the key; ids past it are padding, zero logits) [S, H, L, Dh]."""
  if rows is None:
    return jnp.einsum("bqhd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
  spread = jnp.zeros((key.shape[0],) + query.shape[1:], query.dtype).at[rows].set(query, mode="drop")
  logits = jnp.einsum("bqhd,bhkd->bhqk", spread, key, preferred_element_type=jnp.float32)
  return logits.at[rows].get(mode="fill", fill_value=0)


def _decode_values(weights: Array, value: Array, rows: Array | None) -> Array:
  """float32 weighted values [B, Tq, H, Dh] of `weights` [B, H, Tq, L] over heads-first `value` (as `key` in
  `_decode_logits`)."""
  if rows is None:
    return jnp.einsum("bhqk,bhkd->bqhd", weights, value, preferred_element_type=jnp.float32)
  spread = jnp.zeros((value.shape[0],) + weights.shape[1:], weights.dtype).at[rows].set(weights, mode="drop")
  out = jnp.einsum("bhqk,bhkd->bqhd", spread, value, preferred_element_type=jnp.float32)
  return out.at[rows].get(mode="fill", fill_value=0)


def _prefix_bias(prefix_mask: Array | None, shape: tuple[int, ...], dtype) -> Array:
  """Additive logits bias of the prefix keys, `shape` [B, H, Tq, P]: 0 for used vectors, MASK_VALUE for masked ones."""
  if prefix_mask is None:
    return jnp.zeros(shape, dtype)
  mask = jnp.asarray(prefix_mask, bool).reshape((-1, 1, 1, shape[-1]))  # [B|1, 1, 1, P]
  return jnp.broadcast_to(jnp.where(mask, 0.0, MASK_VALUE).astype(dtype), shape)


class Attention(nn.Module):
  """T5 multi-head attention: no 1/sqrt(head_dim) scaling (it is folded into
  the query initialization) and no biases.

  Keys and values may be extended on the left by a *prefix* (prefix tuning,
  the `adapters` leaves "prefix_key"/"prefix_value"): shared or per-row arrays
  [P, heads, head_dim] or [batch|1, P, heads, head_dim] that every query sees,
  with no position bias (prefix vectors have no position in the sequence).
  An optional "prefix_mask" ([P] or [batch, P])
  hides unused prefix vectors, so rows with prefixes of different lengths, or
  none, share one batch.

  In decode mode the keys and values live in the `cache` collection
  (`cached_key`/`cached_value` [batch, heads, length, head_dim]: heads first), created by
  `init_cache`: empty slots for self-attention, filled at `cache_index` step
  by step; for cross-attention the projected encoder keys and values, computed
  once, so a decode step costs one query per layer.
  """

  num_heads: int
  head_dim: int
  emb_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _project(self, name: str, x: Array, features: int, axes: tuple[str, str], fan_in: int) -> Array:
    return Dense(features, axes, fan_in_init(fan_in), self.dtype, self.param_dtype, name=name)(x)

  def _project_kv(self, inputs_kv: Array, adapters: Mapping[str, Array]) -> tuple[Array, Array]:
    """Keys and values [B, T, heads, head_dim] of `inputs_kv` [B, T, embed], with the adapters that apply before
    the cache (IA3's "key_scale"/"value_scale", LoRA's value delta) applied, so a cached key or value is final:
    decoding reads it as it is."""
    joined = self.num_heads * self.head_dim
    key = self._project("key", inputs_kv, joined, ("embed", "joined_kv"), self.emb_dim)
    value = self._project("value", inputs_kv, joined, ("embed", "joined_kv"), self.emb_dim)
    value = _add_low_rank(value, inputs_kv, adapters, "value")  # [B, T, H*Dh]
    key, value = _split_heads(key, self.num_heads, self.head_dim), _split_heads(value, self.num_heads, self.head_dim)
    return _scale(key, adapters.get("key_scale")), _scale(value, adapters.get("value_scale"))

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array | None,
    bias: Array | None,
    *,
    adapters: Mapping[str, Array] | None = None,
    decode: bool = False,
    cache_index: Array | None = None,
    cache_rows: Array | None = None,
    init_cache_length: int | None = None,
    deterministic: bool = True,
  ) -> Array:
    """Attends from `inputs_q` [B, Tq, embed] to `inputs_kv` [B, Tk, embed].

    Args:
      inputs_q: queries' inputs.
      inputs_kv: keys' and values' inputs. In decode mode: the new positions
        (self-attention) or None (cross-attention: the cache holds them).
      bias: additive logits bias, broadcastable to [B, heads, Tq, Tk]: the
        mask (0 or MASK_VALUE) plus the relative position bias, over the keys
        (not the prefix). In decode mode Tk is the cache length.
      adapters: this attention's tuned vectors (`prompt_tuning.models.adapters`):
        "prefix_key", "prefix_value" [P, H, Dh] or [B|1, P, H, Dh], and
        "prefix_mask" bool [P] or [B, P], which prefix vectors are used
        (default all); "key_scale", "value_scale" [H*Dh] or [B, H*Dh],
        IA3's rescaling of the keys and values, applied before the cache
        (cross-attention's cache is made by `init_cache` with them; a decode
        step reads its cached keys and values as they are);
        "lora_query_a"/"lora_query_b", "lora_value_a"/"lora_value_b": LoRA's
        factors A [D, r] or [B, D, r] and B [r, H*Dh] or [B, r, H*Dh] (scaling
        folded in): query += (inputs_q @ A) @ B, value likewise (before the
        cache, as IA3's scales).
      decode: read (and for self-attention, update) the cache.
      cache_index: in decode mode, the cache slot of the first new position: an int scalar, or int [B], each
        row's own (`write_cache`).
      cache_rows: in decode mode, optional int [B]: the cache row each row of the batch reads and writes, when
        the cache holds more rows than the batch (a continuous batch's running slots: only they are computed);
        ids past the cache's rows are padding rows, which write nothing. The cache is attended to whole (its
        rows outside the batch with zero queries, their results dropped): on CPU, cheaper than gathering the
        batch's rows of every cached key and value.
      init_cache_length: create the cache instead of attending: empty slots of
        this length for self-attention (`inputs_kv` is the query input), or the
        projected `inputs_kv` for cross-attention (pass 0; the adapters that
        apply before the cache are applied). Returns zeros.
      deterministic: disable dropout.

    Returns:
      [B, Tq, embed].
    """
    batch, joined = inputs_q.shape[0], self.num_heads * self.head_dim
    adapters = adapters or {}
    query = self._project("query", inputs_q, joined, ("embed", "joined_kv"), self.emb_dim * self.head_dim)
    query = _add_low_rank(query, inputs_q, adapters, "query")  # [B, Tq, H*Dh]
    query = _split_heads(query, self.num_heads, self.head_dim)  # [B, Tq, H, Dh]
    if init_cache_length is not None:
      self._init_cache(inputs_kv, batch, init_cache_length, adapters)
      return jnp.zeros(inputs_q.shape[:2] + (self.emb_dim,), self.dtype)
    if decode:
      key, value = self._read_cache(inputs_kv, cache_index, adapters, cache_rows)
    else:
      key, value = self._project_kv(inputs_kv, adapters)

    length_axis = 2 if decode else 1  # the keys' [B, H, L, Dh] in decode mode (the cache's), else [B, T, H, Dh]
    bias = jnp.broadcast_to(bias, (batch, self.num_heads, query.shape[1], key.shape[length_axis]))
    keys, values = [key], [value]  # the prefix's (if any), then the sequence's (the cache's when decoding)
    if "prefix_key" in adapters:
      prefix_key = _broadcast_prefix(adapters["prefix_key"], batch).astype(key.dtype)
      prefix_value = _broadcast_prefix(adapters["prefix_value"], batch).astype(value.dtype)
      if decode:
        prefix_key, prefix_value = _heads_first(prefix_key), _heads_first(prefix_value)
      keys.insert(0, prefix_key)
      values.insert(0, prefix_value)
      # Prefix keys: visible unless masked, no position bias.
      prefix_shape = bias.shape[:3] + (prefix_key.shape[length_axis],)
      prefix_bias = _prefix_bias(adapters.get("prefix_mask"), prefix_shape, bias.dtype)
      bias = jnp.concatenate([prefix_bias, bias], axis=-1)

    # float32 logits (T5X's float32_attention_logits), from `dtype` queries and keys: the softmax's input.
    if decode:  # each part on its own: no copy of the cache joined to the prefix at every step
      rows = [None] * (len(keys) - 1) + [cache_rows]  # the cache's part (the last) is laid out by cache row
      logits = jnp.concatenate([_decode_logits(query, k.astype(query.dtype), r) for k, r in zip(keys, rows)], -1)
    else:
      key, value = jnp.concatenate(keys, axis=1), jnp.concatenate(values, axis=1)
      logits = jnp.einsum("bqhd,bkhd->bhqk", query, key.astype(query.dtype), preferred_element_type=jnp.float32)
    logits = logits + bias.astype(jnp.float32)  # [B, H, Tq, Tk]
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # [B, H, Tq, Tk]
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    if decode:
      splits = np.cumsum([v.shape[2] for v in values])[:-1].tolist()
      parts = zip(jnp.split(weights, splits, axis=-1), values, rows)
      out = sum(_decode_values(w, v.astype(self.dtype), r) for w, v, r in parts).astype(self.dtype)
    else:
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(self.dtype))
    out = out.reshape(out.shape[:2] + (joined,))
    return self._project("out", out, self.emb_dim, ("joined_kv", "embed"), joined)

  def _init_cache(self, inputs_kv: Array, batch: int, length: int, adapters: Mapping[str, Array]) -> None:
    if length == 0:  # cross-attention: the encoder's keys and values, projected once (adapters included).
      key, value = map(_heads_first, self._project_kv(inputs_kv, adapters))
    else:
      key = value = jnp.zeros((batch, self.num_heads, length, self.head_dim), self.dtype)
    self.variable("cache", "cached_key", lambda: key)
    self.variable("cache", "cached_value", lambda: value)

  def _read_cache(
    self, inputs_kv: Array | None, cache_index: Array | None, adapters: Mapping[str, Array], rows: Array | None
  ) -> tuple[Array, Array]:
    if not self.has_variable("cache", "cached_key"):
      raise ValueError("Decoding needs a cache: call the model's `init_cache` method first.")
    cached_key = self.variable("cache", "cached_key")
    cached_value = self.variable("cache", "cached_value")
    if inputs_kv is not None:  # self-attention: write the new positions at cache_index.
      new_key, new_value = self._project_kv(inputs_kv, adapters)
      cached_key.value = write_cache(cached_key.value, new_key, cache_index, rows)
      cached_value.value = write_cache(cached_value.value, new_value, cache_index, rows)
    return cached_key.value, cached_value.value


def write_cache(cache: Array, new: Array, index: Array, rows: Array | None = None) -> Array:
  """Writes `new` [B, T, H, Dh] into `cache` [B, H, L, Dh] (heads first) at positions index .. index + T - 1.

  `index` is an int scalar (every row at one position) or int [B], each row at its own (rows of a continuous
  batch decoding at different positions, in one batched step); a row's positions beyond L are dropped. `rows`:
  optional int [B], the cache row of each of new's rows (the cache may hold more); ids past the cache are dropped.
  """
  new = new.astype(cache.dtype)
  index = jnp.asarray(index)
  if index.ndim == 0 and rows is None:
    return jax.lax.dynamic_update_slice(cache, _heads_first(new), (0, 0, index, 0))
  positions = jnp.broadcast_to(index, new.shape[:1])[:, None] + jnp.arange(new.shape[1])  # [B, T]
  rows = jnp.arange(new.shape[0]) if rows is None else rows
  # Two index arrays around a slice: the indexed result is [B, T, H, Dh], new's own layout.
  return cache.at[rows[:, None], :, positions].set(new, mode="drop")


_ACTIVATION_FNS = {
  "relu": jax.nn.relu,
  # T5 1.1 uses the tanh approximation (Hugging Face's "gelu_new").
  "gelu": functools.partial(jax.nn.gelu, approximate=True),
  "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
  "silu": jax.nn.silu,
  "linear": lambda x: x,
}


class MLP(nn.Module):
  """T5's feed-forward block; with several activations their outputs are multiplied (GLU)."""

  mlp_dim: int
  emb_dim: int
  activations: Sequence[str] = ("relu",)
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True, adapters: Mapping[str, Array] | None = None) -> Array:
    """[B, T, embed] -> [B, T, embed]; `adapters` may hold "scale" [mlp] or [B, mlp] (IA3's l_ff)."""
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = None
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = _ACTIVATION_FNS[act](dense(self.mlp_dim, ("embed", "mlp"), fan_in_init(self.emb_dim), name=name)(x))
      hidden = h if hidden is None else hidden * h  # [B, T, mlp]
    hidden = _scale(hidden, (adapters or {}).get("scale"))
    hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_length", "act_mlp"))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return dense(self.emb_dim, ("mlp", "embed"), fan_in_init(self.mlp_dim), name="wo")(hidden)
