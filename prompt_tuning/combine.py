"""How a soft prompt joins the embedded input, and where every position lands.

The combination mode decides where the P prompt vectors go in each row of
embedded tokens [B, T, D]:

- "prefix" (default): before the first token, `[prompt, x_1 .. x_T]`. What
  Lester et al. (2021, section 2) and Hugging Face PEFT prompt tuning do.
- "prefix_after_bos": after the first token, `[x_1, prompt, x_2 .. x_T]`. For
  decoder-only (prefix LM) models, whose sequence opens with the start token 0,
  so the prompt never displaces the token every pretraining example began with.
- "suffix": at the end of the input, *before* its final EOS when the input
  ends with EOS: `[x_1 .. x_{n-1}, prompt, EOS, padding]`. The input still
  ends the way every pretraining input ended, and for a decoder-only model the
  first target is predicted from EOS, a real token (the reference
  implementation's default, `before_eos=True`). When the last real token is not
  EOS the prompt simply follows it.
- "suffix_after_eos": after the last real input token, EOS included:
  `[x_1 .. x_n, prompt, padding]`.

"The input" is the encoder input for an encoder-decoder model; for a
decoder-only model it is the fully visible inputs part of the prefix-LM
sequence (`decoder_causal_attention`), so a suffix prompt goes between the
inputs and the targets. Prompt positions are always real (visible) keys.

Rows may use prompts of different lengths (mixed-task batches): with
`prompt_lengths` [B], row b uses the first `prompt_lengths[b]` vectors of its
prompt (0: no prompt). Its unused prompt vectors go to the very end of the row,
after the padding, and are masked, so a row's real positions see exactly the
sequence they would see alone with their own, shorter prompt (T5 uses relative
positions only, so where a row's sequence starts does not matter).

`join` returns the joined embeddings, the key mask, and the index maps the
model needs to spread per-token flags onto the joined layout (`spread_tokens`)
and to keep only the token positions of its outputs (`gather_tokens`).

Packed rows (seqio's packing: several examples per row, `segment_ids` 1, 2, ...
and 0 for padding) take the prompt once per *segment*, with `join_packed`.
Each example keeps room for its prompt: its inputs end with P `PROMPT_SLOT`
tokens, appended before packing (`prompt_tuning.inputs`), so the packer counts
the prompt in every example's length and the joined row is exactly as long as
the packed one. Within each segment the prompt goes where the mode says, as
`join` would put it in a row holding that example alone:
`[tok[:s], prompt[:p], tok[s:n], prompt[p:P]]`, the unused vectors (rows using
fewer, `prompt_lengths`) at the segment's end and masked. The joined layout
only moves positions inside their segment, so the segments stay contiguous
runs with their segment ids unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

MODES = ("prefix", "prefix_after_bos", "suffix", "suffix_after_eos")
DEFAULT_MODE = "prefix"
EOS_ID = 1  # T5's SentencePiece end-of-sequence id.
# The token id of the positions a packed example keeps for its prompt (never a vocabulary id: those are >= 0).
PROMPT_SLOT = -1
_STATIC_STARTS = {"prefix": 0, "prefix_after_bos": 1}  # modes whose prompt starts at the same index in every row


class Joined(NamedTuple):
  """A row-wise joined sequence of prompt vectors and tokens (total length T' = P + T).

  Attributes:
    embedded: [B, T', D] the joined embeddings.
    mask: bool [B, T'] real positions: prompt vectors in use and real tokens.
    is_prompt: bool [B, T'] positions holding a prompt vector in use.
    is_token: bool [B, T'] positions holding a token (real or padding).
    token_source: int [B, T'] for token positions, the token's index in the input.
    token_positions: int [B, T] the joined position of every input token.
    prompt_source: int [B, T'] for prompt positions, the index of the prompt vector they hold.
  """

  embedded: Array
  mask: Array
  is_prompt: Array
  is_token: Array
  token_source: Array
  token_positions: Array
  prompt_source: Array


def check_mode(mode: str) -> None:
  """Raises a ValueError naming the known modes when `mode` is not one of them."""
  if mode not in MODES:
    raise ValueError(f"Unknown prompt combination {mode!r}; use one of {MODES} (default {DEFAULT_MODE!r}).")


def insertion_points(mode: str, tokens: Array, input_length: Array, eos_id: int = EOS_ID) -> Array:
  """Where each row's prompt starts, in the row's token indices.

  Args:
    mode: one of MODES.
    tokens: int [B, T] the input tokens (read by "suffix" to find EOS).
    input_length: int [B] the number of leading positions that form each
      row's input (its real tokens, or a prefix LM's inputs part).
    eos_id: the end-of-sequence id "suffix" places the prompt before.

  Returns:
    int [B]: the prompt takes token positions insertion .. insertion + P - 1.
  """
  check_mode(mode)
  batch, length = tokens.shape
  if mode in _STATIC_STARTS:
    return jnp.full((batch,), min(_STATIC_STARTS[mode], length), jnp.int32)
  input_length = jnp.asarray(input_length, jnp.int32)
  if mode == "suffix_after_eos":
    return input_length
  last = jnp.take_along_axis(tokens, jnp.clip(input_length - 1, 0, length - 1)[:, None], axis=1)[:, 0]
  ends_with_eos = (input_length > 0) & (last == eos_id)
  return input_length - ends_with_eos.astype(jnp.int32)


def _as_batched_prompt(prompt: Array, batch: int, emb_dim: int, dtype) -> Array:
  """[P, D] or [B|1, P, D] -> [B, P, D], with a shape error a user can act on."""
  if prompt.ndim == 2:
    prompt = prompt[None]
  if prompt.ndim != 3 or prompt.shape[-1] != emb_dim or prompt.shape[0] not in (1, batch):
    raise ValueError(
      f"prompt has shape {prompt.shape}; expected [P, {emb_dim}] (shared) or [{batch}, P, {emb_dim}] (per row)."
    )
  return jnp.broadcast_to(prompt, (batch,) + prompt.shape[1:]).astype(dtype)


def _layout(start: Array, used: Array, length: int, prompt_length: int) -> tuple[Array, Array, Array, Array]:
  """Index maps of the joined layout [tok[:s], prompt[:p], tok[s:], prompt[p:]] per row.

  Returns:
    (is_token, token_source, is_prompt, prompt_source), each [B, T + P].
  """
  i = jnp.arange(length + prompt_length)[None, :]  # [1, T']
  s, p = start[:, None], used[:, None]  # [B, 1]
  is_prompt = (i >= s) & (i < s + p)
  is_token = (i < s) | ((i >= s + p) & (i < length + p))
  token_source = jnp.clip(jnp.where(i < s, i, i - p), 0, length - 1)
  # Prompt vectors in use come first, the unused tail after the padding.
  prompt_source = jnp.clip(jnp.where(is_prompt, i - s, i - length), 0, prompt_length - 1)
  return is_token, token_source, is_prompt, prompt_source


def _take_rows(x: Array, index: Array) -> Array:
  """x [B, N, ...] gathered along axis 1 by index [B, M] -> [B, M, ...]."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def join(
  prompt: Array | None,
  embedded: Array,
  mask: Array,
  *,
  mode: str = DEFAULT_MODE,
  tokens: Array | None = None,
  input_length: Array | None = None,
  prompt_lengths: Array | None = None,
  eos_id: int = EOS_ID,
) -> Joined:
  """Joins `prompt` and `embedded` row by row.

  Args:
    prompt: [P, D] (shared) or [B, P, D] (per row), or None (no prompt).
    embedded: [B, T, D] the embedded tokens.
    mask: bool [B, T] real token positions.
    mode: one of MODES (see the module docstring).
    tokens: int [B, T] the tokens (needed by "suffix").
    input_length: int [B] leading positions forming the input (suffix modes;
      default: the number of real tokens).
    prompt_lengths: optional int [B]: row b uses its first prompt_lengths[b]
      prompt vectors (0 = no prompt); default all P.
    eos_id: the EOS id ("suffix").

  Returns:
    The Joined sequence, of length P + T.

  Raises:
    ValueError: unknown mode, a prompt of the wrong shape, or "suffix" without tokens.
  """
  check_mode(mode)
  batch, length, emb_dim = embedded.shape
  if prompt is None:
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    no_prompt = jnp.zeros((batch, length), bool)
    return Joined(embedded, mask, no_prompt, ~no_prompt, positions, positions, jnp.zeros((batch, length), jnp.int32))
  prompt = _as_batched_prompt(jnp.asarray(prompt), batch, emb_dim, embedded.dtype)  # [B, P, D]
  prompt_length = prompt.shape[1]
  if input_length is None:
    input_length = jnp.sum(mask, axis=1)
  if tokens is None:
    if mode == "suffix":
      raise ValueError("prompt combination 'suffix' needs the input tokens to find EOS; pass tokens=.")
    tokens = jnp.zeros((batch, length), jnp.int32)
  start = insertion_points(mode, tokens, input_length, eos_id)  # [B]
  used = jnp.full((batch,), prompt_length, jnp.int32)
  if prompt_lengths is not None:
    used = jnp.clip(jnp.broadcast_to(jnp.asarray(prompt_lengths, jnp.int32), (batch,)), 0, prompt_length)
  is_token, token_source, is_prompt, prompt_source = _layout(start, used, length, prompt_length)
  static_start = _STATIC_STARTS.get(mode) if prompt_lengths is None else None
  if static_start is not None:
    # Every row alike: a plain concatenation, the cheapest layout for XLA to shard.
    static_start = min(static_start, length)
    joined = jnp.concatenate([embedded[:, :static_start], prompt, embedded[:, static_start:]], axis=1)
  else:
    joined = jnp.where(is_token[..., None], _take_rows(embedded, token_source), _take_rows(prompt, prompt_source))
  joined_mask = jnp.where(is_token, _take_rows(mask, token_source), is_prompt)
  token_index = jnp.arange(length)[None, :]
  token_positions = token_index + jnp.where(token_index >= start[:, None], used[:, None], 0)  # [B, T]
  return Joined(joined, joined_mask, is_prompt, is_token, token_source, token_positions, prompt_source)


def _segment_totals(values: Array, segment_ids: Array) -> Array:
  """Per position, the sum of `values` [B, T] over the position's segment (segment ids [B, T], 0 included)."""
  batch, length = segment_ids.shape
  flat = (segment_ids + (length + 1) * jnp.arange(batch)[:, None]).reshape(-1)  # [B*T] ids unique across rows
  totals = jax.ops.segment_sum(values.reshape(-1), flat, num_segments=batch * (length + 1))
  return totals[flat].reshape(batch, length)


def join_packed(
  prompt: Array | None,
  embedded: Array,
  tokens: Array,
  segment_ids: Array,
  *,
  mode: str = DEFAULT_MODE,
  prompt_lengths: Array | None = None,
  eos_id: int = EOS_ID,
) -> Joined:
  """Joins `prompt` to every segment of packed rows, in the segments' `PROMPT_SLOT` positions (module docstring).

  A row's segments share the row's prompt: [P, D] for every row or [B, P, D] one per row, or each segment has its
  own, [B, S, P, D] (examples of different tasks in one packed row: segment k takes prompt[b, k - 1]; S at least
  the row's number of segments); row b's segments use its first `prompt_lengths[b]` vectors.

  Args:
    prompt: [P, D], [B, P, D] or [B, S, P, D], or None (no prompt, and no slots).
    embedded: [B, T, D] the embedded packed tokens (a slot's embedding is never used).
    tokens: int [B, T] the packed tokens: each segment's real tokens, then its P PROMPT_SLOT tokens.
    segment_ids: int [B, T] seqio's segment ids (1, 2, ... per example; 0: padding).
    mode: one of MODES.
    prompt_lengths: optional int [B]: the prompt vectors row b's segments use (0 = none); default all P.
    eos_id: the EOS id ("suffix").

  Returns:
    The Joined sequence, of length T; `token_source` and `token_positions` map packed positions (slots included)
    to joined ones and back.

  Raises:
    ValueError: unknown mode, or a prompt of the wrong shape.
  """
  check_mode(mode)
  batch, length, emb_dim = embedded.shape
  tokens, segment_ids = jnp.asarray(tokens, jnp.int32), jnp.asarray(segment_ids, jnp.int32)
  in_segment = segment_ids > 0
  real = in_segment & (tokens > 0)
  i = jnp.broadcast_to(jnp.arange(length)[None, :], (batch, length))
  if prompt is None:
    no_prompt = jnp.zeros((batch, length), bool)
    return Joined(embedded, real, no_prompt, ~no_prompt, i, i, jnp.zeros((batch, length), jnp.int32))
  prompt = jnp.asarray(prompt)
  segments = 1
  if prompt.ndim == 4:  # [B, S, P, D]: one prompt per segment, laid end to end as [B, S * P, D]
    if prompt.shape[0] != batch or prompt.shape[-1] != emb_dim:
      raise ValueError(f"per-segment prompts have shape {prompt.shape}; expected [{batch}, S, P, {emb_dim}].")
    _, segments, prompt_length, _ = prompt.shape
    prompt = prompt.reshape(batch, segments * prompt_length, emb_dim).astype(embedded.dtype)
  else:
    prompt = _as_batched_prompt(prompt, batch, emb_dim, embedded.dtype)  # [B, P, D]
    prompt_length = prompt.shape[1]
  used = jnp.full((batch, 1), prompt_length, jnp.int32)
  if prompt_lengths is not None:
    used = jnp.clip(jnp.broadcast_to(jnp.asarray(prompt_lengths, jnp.int32), (batch,)), 0, prompt_length)[:, None]
  # Per position, its segment's first index, real token count n and insertion point s (segment-local indices).
  first = jnp.concatenate([jnp.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start = jax.lax.cummax(jnp.where(first, i, 0), axis=1)  # [B, T]
  n = _segment_totals(real.astype(jnp.int32), segment_ids)  # [B, T]
  last_token = jnp.take_along_axis(tokens, jnp.clip(start + n - 1, 0, length - 1), axis=1)
  s = {
    "prefix": jnp.zeros_like(n),
    "prefix_after_bos": jnp.minimum(n, 1),
    "suffix": n - ((n > 0) & (last_token == eos_id)).astype(jnp.int32),
    "suffix_after_eos": n,
  }[mode]
  local = i - start
  # The segment-local layout [tok[:s], prompt[:p], tok[s:n], prompt[p:]], as combine._layout lays out a row.
  is_prompt = in_segment & (local >= s) & (local < s + used)
  is_token = ~in_segment | (local < s) | ((local >= s + used) & (local < n + used))
  token_source = jnp.where(in_segment, start + jnp.where(local < s, local, local - used), i)
  token_source = jnp.clip(token_source, 0, length - 1)
  prompt_source = jnp.clip(jnp.where(is_prompt, local - s, local - n), 0, prompt_length - 1)
  segment_offset = jnp.clip(segment_ids - 1, 0, segments - 1) * prompt_length  # 0 when segments share the prompt
  joined = jnp.where(
    is_token[..., None], _take_rows(embedded, token_source), _take_rows(prompt, prompt_source + segment_offset)
  )
  mask = jnp.where(is_token, _take_rows(real, token_source), is_prompt)
  # The inverse map, for every packed position: a real token moves past the prompt when it follows it; slot j
  # lands where prompt vector j went (used) or at the segment's end (unused).
  slot = local - n
  token_positions = jnp.where(
    ~in_segment,
    i,
    jnp.where(
      local < n,
      i + jnp.where(local >= s, used, 0),
      start + jnp.where(slot < used, s + slot, n + slot),
    ),
  )
  return Joined(joined, mask, is_prompt, is_token, token_source, token_positions, prompt_source)


def at_prompt_positions(vectors: Array, joined: Joined) -> Array:
  """Prompt vectors [P, D] or [B, P, D] laid onto the joined layout: [B, T', D], zeros off the prompt positions.

  Row b's prompt position holding vector j gets vectors[(b,) j], so per-layer prompts follow the prompt
  wherever the combination mode and `prompt_lengths` put it.
  """
  batch, _ = joined.is_prompt.shape
  vectors = _as_batched_prompt(jnp.asarray(vectors), batch, vectors.shape[-1], joined.embedded.dtype)  # [B, P, D]
  return jnp.where(joined.is_prompt[..., None], _take_rows(vectors, joined.prompt_source), 0)


def spread_tokens(values: Array, joined: Joined, prompt_value) -> Array:
  """Per-token values [B, T] onto the joined layout [B, T']; prompt (and unused) positions get `prompt_value`."""
  return jnp.where(joined.is_token, _take_rows(values, joined.token_source), prompt_value)


def gather_tokens(x: Array, joined: Joined) -> Array:
  """Keeps the token positions of joined outputs: [B, T', ...] -> [B, T, ...]."""
  return _take_rows(x, joined.token_positions)


def right_justify(joined: Joined) -> tuple[Joined, Array]:
  """Rolls each row so its last real position is the last position.

  Decoding a prefix LM appends generated tokens after the prefilled inputs;
  with every row ending at the same slot, one cache index serves all rows.
  Only relative positions enter T5, and the padding moved to the front stays
  masked, so a row's real positions compute exactly what they did before.

  Returns:
    (the rolled Joined, shift int [B] added to every position of each row).
  """
  total = joined.mask.shape[1]
  last_real = jnp.max(jnp.where(joined.mask, jnp.arange(total)[None, :], 0), axis=1)  # [B]
  shift = total - 1 - last_real
  source = (jnp.arange(total)[None, :] - shift[:, None]) % total  # [B, T']
  rolled = Joined(
    embedded=_take_rows(joined.embedded, source),
    mask=_take_rows(joined.mask, source),
    is_prompt=_take_rows(joined.is_prompt, source),
    is_token=_take_rows(joined.is_token, source),
    token_source=_take_rows(joined.token_source, source),
    token_positions=(joined.token_positions + shift[:, None]) % total,
    prompt_source=_take_rows(joined.prompt_source, source),
  )
  return rolled, shift
