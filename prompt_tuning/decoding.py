"""Decoding: greedy, beam search (T5X length penalty), temperature / top-k / top-p sampling.

The encoder (with its prompt) runs once; each step feeds one token through the
decoder's key/value cache, so a step costs one position. The whole loop is a
`lax.while_loop` inside one `jax.jit`, batched, and stops when every row has
emitted EOS.

    out = generate(T5(config), params, encoder_input_tokens, prompt=prompt,
                   settings=DecodingSettings(method="beam", num_beams=4))
    out.tokens   # int [B, max_decode_length], 0 after EOS
    out.scores   # float [B]: log-probability (greedy, sampling) or beam score

A decoder-only (prefix LM) model takes its inputs as `decoder_prompt_tokens`:
the start token, the inputs and the prompt are written into the cache in one
pass (`T5.prefill`, rows right-justified so all continue at the same slot),
and decoding goes on after them.

    out = generate(config, params, decoder_prompt_tokens=inputs, prompt=prompt)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from prompt_tuning import combine
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.t5 import T5, Adapters, Prefix
from prompt_tuning.trainer import restrict_logits

Array = jax.Array
NEG_INF = -1.0e7  # finite, so sums of "impossible" scores stay ordered and NaN-free

METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodingSettings:
  """How to decode.

  Attributes:
    method: "greedy", "beam" or "sample".
    max_decode_length: decoded positions (EOS included).
    num_beams: beam width (beam search).
    alpha: length-penalty exponent of T5X's beam search, ((5 + len) / 6) ** alpha.
    temperature: sampling temperature (sample); 0 means greedy.
    top_k: keep the k most likely tokens (sample; 0 = off).
    top_p: keep the smallest set of tokens with probability >= top_p (sample; 1.0 = off).
    eos_id: end-of-sequence id (T5: 1).
  """

  method: str = "greedy"
  max_decode_length: int = 32
  num_beams: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int = 1

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"Unknown decoding method {self.method!r}; use one of {METHODS}.")
    if self.max_decode_length < 1:
      raise ValueError(f"max_decode_length must be >= 1, got {self.max_decode_length}.")
    if self.method == "beam" and self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
    if self.top_k < 0 or self.temperature < 0:
      raise ValueError("top_k and temperature must be non-negative.")


class DecodeOutput(NamedTuple):
  tokens: Array  # int [B, L] (beam with all beams: [B, K, L]); 0 after EOS
  scores: Array  # float [B] (or [B, K])


# ---------------------------------------------------------------------------
# The model step: one token in, log-probabilities and the updated cache out.


def _step_fn(model: T5, params, encoder_mask: Array | None, adapters: Adapters | None):
  def step(tokens: Array, position: Array, cache) -> tuple[Array, Any]:
    logits, mutated = model.apply(
      {"params": params, "cache": cache},
      None,
      encoder_mask,
      tokens,  # [B, 1]
      adapters=adapters,
      decode_position=position,
      method=T5.decode,
      mutable=["cache"],
    )
    return logits[:, -1], mutated["cache"]  # [B, vocab]

  return step


def _init_cache(
  model: T5, params, encoded: Array | None, encoder_mask: Array | None, batch: int, max_length: int, adapters
):
  _, variables = model.apply(
    {"params": params}, encoded, encoder_mask, batch, max_length, adapters, method=T5.init_cache, mutable=["cache"]
  )
  return variables["cache"]


def _decoder_only_step_fn(
  model: T5, params, first_logits: Array, key_mask: Array, adapters: Adapters | None, start: int
):
  """The step of a prefilled decoder-only cache.

  Step 0 returns the logits `prefill` computed (its token, the start token of
  the loops, is not fed); step i >= 1 feeds the token chosen at step i - 1 at
  cache slot start + i - 1, after the prefilled prompt and inputs.
  """

  def step(tokens: Array, position: Array, cache) -> tuple[Array, Any]:
    def prefilled():
      return first_logits, cache

    def next_token():
      logits, mutated = model.apply(
        {"params": params, "cache": cache},
        None,
        None,
        tokens,  # [B, 1]
        adapters=adapters,
        decode_position=start + position - 1,
        decoder_key_mask=key_mask,
        method=T5.decode,
        mutable=["cache"],
      )
      return logits[:, -1], mutated["cache"]

    return jax.lax.cond(position == 0, prefilled, next_token)

  return step


# ---------------------------------------------------------------------------
# Greedy and sampling share one loop; only the choice of the next token differs.


def _filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
  """Masks all but the top-k / nucleus (top-p) tokens of `logits` [B, V]."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The smallest prefix whose mass reaches top_p: keep a token if the mass
    # before it is still below top_p (the most likely token is always kept).
    keep_sorted = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def argmax(logits: Array) -> Array:
  """int32 `jnp.argmax` over the last axis of finite logits (the first of equal maxima), as two plain reductions.

  XLA:CPU runs argmax's (value, index) reduction about 2.5x slower than a max and a min (0.75 against 0.3 ms for
  [32, 8192] here), a share of a small model's decode step. A row with NaN has no maximum equal to itself: it gets
  the last id (`jnp.argmax` would give the NaN's; its token means nothing either way, and the server fails such rows).
  """
  vocab = logits.shape[-1]
  best = jnp.max(logits, axis=-1, keepdims=True)
  first = jnp.min(jnp.where(logits == best, jnp.arange(vocab, dtype=jnp.int32), vocab - 1), axis=-1)
  return first.astype(jnp.int32)


def _choose(settings: DecodingSettings, logits: Array, rng: Array) -> Array:
  if settings.method == "greedy" or settings.temperature == 0.0:
    return argmax(logits)
  logits = _filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
  return jax.random.categorical(rng, logits, axis=-1)


def _sequential(step, cache, batch: int, settings: DecodingSettings, rng: Array) -> DecodeOutput:
  length, eos = settings.max_decode_length, settings.eos_id
  tokens = jnp.zeros((batch, length + 1), jnp.int32)  # position 0: the start token (0)

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < length) & ~jnp.all(done)

  def body(state):
    i, tokens, cache, done, scores, rng = state
    rng, sub = jax.random.split(rng)
    current = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)  # [B, 1]
    logits, cache = step(current, i, cache)
    logits = logits.astype(jnp.float32)
    nxt = _choose(settings, logits, sub)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), nxt[:, None], axis=-1)[:, 0]
    nxt = jnp.where(done, 0, nxt)
    scores = scores + jnp.where(done, 0.0, logp)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None].astype(jnp.int32), i + 1, axis=1)
    return i + 1, tokens, cache, done | (nxt == eos), scores, rng

  state = (jnp.array(0), tokens, cache, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32), rng)
  _, tokens, _, _, scores, _ = jax.lax.while_loop(cond, body, state)
  return DecodeOutput(tokens[:, 1:], scores)


# ---------------------------------------------------------------------------
# Beam search, as T5X does it: 2K candidates per step, finished hypotheses
# scored with the length penalty, early exit when no live beam can win.


def length_penalty(alpha: float, length: Array) -> Array:
  """T5X's brevity penalty ((5 + length) / 6) ** alpha (Wu et al. 2016)."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, beam_indices: Array, batch: int, beams: int, skip_cross: bool = True):
  """Selects beams: leaves [B*K, ...] -> [B*K', ...] following `beam_indices` [B, K']."""
  new_beams = beam_indices.shape[1]

  def gather(path, x):
    names = [getattr(k, "key", "") for k in path]
    if x.ndim == 0 or (skip_cross and "encoder_decoder_attention" in names):
      # Scalars, and cross-attention keys/values, which are equal
      # for all beams of a row.
      return x
    x = x.reshape((batch, beams) + x.shape[1:])
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1).reshape((batch * new_beams,) + x.shape[2:])

  return jax.tree_util.tree_map_with_path(gather, tree)


def _beam_search(step, cache, batch: int, settings: DecodingSettings) -> tuple[Array, Array]:
  k, length, eos = settings.num_beams, settings.max_decode_length, settings.eos_id
  live_seqs = jnp.zeros((batch, k, length + 1), jnp.int32)
  live_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))  # [B, K]
  fin_seqs = jnp.zeros_like(live_seqs)
  fin_scores = jnp.full((batch, k), NEG_INF, jnp.float32)
  fin_flags = jnp.zeros((batch, k), bool)

  def cond(state):
    i, _, live_logp, _, fin_scores, fin_flags, _ = state
    # The best a live beam can still reach: its log-prob under the largest penalty.
    best_live = live_logp[:, 0] / length_penalty(settings.alpha, jnp.float32(length))
    worst_fin = jnp.where(fin_flags, fin_scores, NEG_INF).min(axis=1)
    can_improve = ~jnp.all(fin_flags, axis=1) | (best_live > worst_fin)
    return (i < length) & jnp.any(can_improve)

  def body(state):
    i, live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, cache = state
    current = jax.lax.dynamic_slice_in_dim(live_seqs, i, 1, axis=2).reshape(batch * k, 1)
    logits, cache = step(current, i, cache)
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
    candidates = (live_logp[:, :, None] + logp).reshape(batch, k * vocab)
    top_logp, top_idx = jax.lax.top_k(candidates, 2 * k)  # [B, 2K]
    top_beam, top_token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(live_seqs, top_beam[:, :, None], axis=1)
    top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_token[:, :, None], i + 1, axis=2)
    ended = top_token == eos

    # Live: the best K candidates that did not end.
    live_logp, pick = jax.lax.top_k(jnp.where(ended, NEG_INF, top_logp), k)
    live_seqs = jnp.take_along_axis(top_seqs, pick[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(top_beam, pick, axis=1), batch, k)

    # Finished: merge the candidates that ended into the K best so far.
    new_scores = jnp.where(ended, top_logp / length_penalty(settings.alpha, (i + 1).astype(jnp.float32)), NEG_INF)
    all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
    all_flags = jnp.concatenate([fin_flags, ended], axis=1)
    fin_scores, pick = jax.lax.top_k(jnp.where(all_flags, all_scores, NEG_INF), k)
    fin_flags = jnp.take_along_axis(all_flags, pick, axis=1)
    fin_seqs = jnp.take_along_axis(jnp.concatenate([fin_seqs, top_seqs], axis=1), pick[:, :, None], axis=1)
    return i + 1, live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, cache

  cache = _gather_beams(cache, jnp.zeros((batch, k), jnp.int32), batch, 1, skip_cross=False)  # repeat rows K times
  state = (jnp.array(0), live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, cache)
  _, live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, _ = jax.lax.while_loop(cond, body, state)
  # Finished hypotheses rank first (as in T5X); live beams that reached the
  # length limit fill the remaining slots, best first.
  live_scores = live_logp / length_penalty(settings.alpha, jnp.float32(length))
  scores = jnp.concatenate([jnp.where(fin_flags, fin_scores, NEG_INF), live_scores], axis=1)  # [B, 2K]
  rank_key = jnp.concatenate([jnp.where(fin_flags, fin_scores, 2 * NEG_INF), live_scores + NEG_INF], axis=1)
  _, pick = jax.lax.top_k(rank_key, k)
  seqs = jnp.take_along_axis(jnp.concatenate([fin_seqs, live_seqs], axis=1), pick[:, :, None], axis=1)
  return seqs[:, :, 1:], jnp.take_along_axis(scores, pick, axis=1)


# ---------------------------------------------------------------------------
# Public entry points.


def _expand_rows(x: Array | None, times: int, axis: int = 0) -> Array | None:
  return None if x is None else jnp.repeat(x, times, axis=axis)


def _restricted(step, output_ids: tuple[int, ...] | None):
  """The step with its logits restricted to `output_ids` (as training's softmax was: `trainer.restrict_logits`)."""
  if output_ids is None:
    return step

  def restricted_step(tokens: Array, position: Array, cache) -> tuple[Array, Any]:
    logits, cache = step(tokens, position, cache)
    return restrict_logits(logits, output_ids), cache

  return restricted_step


def _decode_loop(step, cache, batch: int, settings: DecodingSettings, rng: Array, return_all_beams: bool, output_ids):
  step = _restricted(step, output_ids)
  if settings.method != "beam":
    return _sequential(step, cache, batch, settings, rng)
  seqs, scores = _beam_search(step, cache, batch, settings)
  if return_all_beams:
    return DecodeOutput(seqs, scores)
  return DecodeOutput(seqs[:, 0], scores[:, 0])


def _beams(settings: DecodingSettings) -> int:
  return settings.num_beams if settings.method == "beam" else 1


_STATIC = ("config", "settings", "return_all_beams", "prompt_combination", "output_ids")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate(
  params,
  encoder_input_tokens,
  adapters,
  rng,
  *,
  config,
  settings,
  return_all_beams,
  prompt_combination,
  output_ids,
):
  model = T5(config)
  batch = encoder_input_tokens.shape[0]
  encoded, encoder_mask = model.apply(
    {"params": params},
    encoder_input_tokens,
    adapters,
    prompt_combination=prompt_combination,
    method=T5.encode,
  )
  beams = _beams(settings)
  cache = _init_cache(model, params, encoded, encoder_mask, batch, settings.max_decode_length, adapters)
  step = _step_fn(model, params, _expand_rows(encoder_mask, beams), sites.expand_rows(adapters, beams))
  return _decode_loop(step, cache, batch, settings, rng, return_all_beams, output_ids)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_decoder_only(
  params, inputs, adapters, rng, *, config, settings, return_all_beams, prompt_combination, output_ids
):
  model = T5(config)
  batch = inputs.shape[0]
  tokens = jnp.pad(inputs, ((0, 0), (1, 0)))  # [B, 1 + Ti]: the start token 0 opens every prefix-LM sequence
  prompt = adapters.get("input", {}).get("prompt")
  prefilled = tokens.shape[1] + (0 if prompt is None else prompt.shape[-2])
  cache = _init_cache(model, params, None, None, batch, prefilled + settings.max_decode_length, adapters)
  (first_logits, key_mask), variables = model.apply(
    {"params": params, "cache": cache},
    tokens,
    adapters,
    prompt_combination,
    method=T5.prefill,
    mutable=["cache"],
  )
  beams = _beams(settings)
  step = _decoder_only_step_fn(
    model,
    params,
    _expand_rows(first_logits, beams),
    _expand_rows(key_mask, beams),
    sites.expand_rows(adapters, beams),
    prefilled,
  )
  return _decode_loop(step, variables["cache"], batch, settings, rng, return_all_beams, output_ids)


def _config(model: T5 | T5Config) -> T5Config:
  return model.config if isinstance(model, T5) else model


def _check_inputs(config: T5Config, encoder_input_tokens, decoder_prompt_tokens) -> Array:
  """The input tokens of either architecture, refusing the other's argument."""
  if config.decoder_only:
    if encoder_input_tokens is not None or decoder_prompt_tokens is None:
      raise ValueError(
        "This T5 is decoder-only: pass encoder_input_tokens=None and the inputs as decoder_prompt_tokens=[B, Ti]."
      )
    return jnp.asarray(decoder_prompt_tokens, jnp.int32)
  if encoder_input_tokens is None or decoder_prompt_tokens is not None:
    raise ValueError(
      "This T5 is an encoder-decoder model: pass the inputs as encoder_input_tokens (decoder_prompt_tokens is for "
      "decoder-only models)."
    )
  return jnp.asarray(encoder_input_tokens, jnp.int32)


def generate(
  model: T5 | T5Config,
  params,
  encoder_input_tokens: Array | None = None,
  *,
  decoder_prompt_tokens: Array | None = None,
  prompt: Array | None = None,
  prefix: Prefix | None = None,
  prompt_combination: str = "prefix",
  prompt_lengths: Array | None = None,
  adapters: Adapters | None = None,
  settings: DecodingSettings = DecodingSettings(),
  rng: Array | None = None,
  return_all_beams: bool = False,
  output_ids: tuple[int, ...] | None = None,
) -> DecodeOutput:
  """Decodes a batch with an encoder-decoder or a decoder-only (prefix LM) T5.

  Decoder-only models prefill the cache with the start token 0, the inputs
  and the prompt in one pass (`T5.prefill`; inputs fully visible, as in
  teacher forcing with `decoder_causal_attention` over them), then decode
  one token per step after them.

  Args:
    model: the T5 module (or its config).
    params: its parameters (the frozen backbone).
    encoder_input_tokens: int [B, Te]; 0 is padding (encoder-decoder models).
    decoder_prompt_tokens: int [B, Ti], the inputs of a decoder-only model,
      left-aligned, 0 is padding, without the start token (added here).
    prompt: optional soft prompt [P, D] or [B, P, D].
    prefix: optional per-layer prefixes (see `prompt_tuning.models.t5`).
    prompt_combination: where the prompt joins the inputs (`prompt_tuning.combine.MODES`).
    prompt_lengths: optional int [B], prompt vectors used by each row.
    adapters: the tuned vectors by site (`prompt_tuning.models.adapters`);
      `prompt`, `prefix` and `prompt_lengths` are merged into it.
    settings: method and its hyper-parameters.
    rng: PRNG key for sampling (default: key 0).
    return_all_beams: beam search returns [B, K, L] tokens and [B, K] scores,
      best first.
    output_ids: the ids every step's softmax normalizes over (a run trained
      with RunConfig.class_label_softmax: its labels' tokens and EOS,
      `run.class_label_ids`), so that decoding chooses as training scored;
      None, the default: the whole vocabulary.

  Returns:
    DecodeOutput(tokens [B, L], scores [B]); tokens after EOS are 0.

  Raises:
    ValueError: inputs given through the other architecture's argument, or an
      unknown prompt combination.
  """
  config = _config(model)
  combine.check_mode(prompt_combination)
  inputs = _check_inputs(config, encoder_input_tokens, decoder_prompt_tokens)
  run = _generate_decoder_only if config.decoder_only else _generate
  return run(
    params,
    inputs,
    sites.from_keywords(prompt, prefix, prompt_lengths, adapters),
    jax.random.key(0) if rng is None else rng,
    config=config,
    settings=settings,
    return_all_beams=return_all_beams,
    prompt_combination=prompt_combination,
    output_ids=None if output_ids is None else tuple(sorted({int(i) for i in output_ids})),
  )


def _pack_prefix_lm(inputs: Array, targets: Array) -> tuple[Array, Array, Array, Array]:
  """Left-aligned inputs [B, Ti] and targets [B, Ty] -> one prefix-LM example per row.

  Returns:
    (decoder_input_tokens, decoder_target_tokens, decoder_causal_attention,
    is_target), each [B, Ti + Ty]: the sequence inputs + targets, shifted right
    behind the start token 0, with the inputs part (and the position that
    predicts the first target) fully visible.
  """
  in_length, out_length = inputs.shape[1], targets.shape[1]
  n = jnp.sum(inputs > 0, axis=1, keepdims=True)  # [B, 1]
  i = jnp.arange(in_length + out_length)[None, :]  # [1, T]
  from_inputs = i < n
  from_targets = ~from_inputs & (i - n < out_length)
  sequence = jnp.where(
    from_inputs,
    jnp.take_along_axis(inputs, jnp.clip(i, 0, in_length - 1), axis=1),
    jnp.take_along_axis(targets, jnp.clip(i - n, 0, out_length - 1), axis=1),
  )
  sequence = jnp.where(from_inputs | from_targets, sequence, 0)  # [B, T]
  decoder_inputs = jnp.pad(sequence[:, :-1], ((0, 0), (1, 0)))
  return decoder_inputs, sequence, (i <= n).astype(jnp.int32), from_targets & (sequence > 0)


@functools.partial(jax.jit, static_argnames=("config", "prompt_combination", "output_ids"))
def _sequence_log_probs(params, inputs, targets, adapters, *, config, prompt_combination, output_ids=None):
  kwargs = dict(adapters=adapters, prompt_combination=prompt_combination)
  if config.decoder_only:
    decoder_inputs, targets, causal_attention, weights = _pack_prefix_lm(inputs, targets)
    logits = T5(config).apply(
      {"params": params}, None, decoder_inputs, targets, decoder_causal_attention=causal_attention, **kwargs
    )
  else:
    decoder_inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))  # shift right, start token 0
    logits = T5(config).apply({"params": params}, inputs, decoder_inputs, targets, **kwargs)
    weights = targets > 0
  logits = restrict_logits(logits, output_ids)  # [B, L, vocab] float32; unchanged when output_ids is None
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(weights, logp, 0.0), axis=-1)


def sequence_log_probs(
  model: T5 | T5Config,
  params,
  encoder_input_tokens,
  target_tokens,
  *,
  decoder_prompt_tokens=None,
  prompt=None,
  prefix=None,
  prompt_combination: str = "prefix",
  prompt_lengths=None,
  adapters: Adapters | None = None,
  output_ids: tuple[int, ...] | None = None,
):
  """Teacher-forced log p(target | input) per row [B] (summed over real target tokens).

  `output_ids`: the ids the softmax normalizes over (RunConfig.class_label_softmax: the class labels' tokens and
  EOS, `run.class_label_ids`); None, the default: the whole vocabulary.

  For a decoder-only model pass `encoder_input_tokens=None` and the inputs as
  `decoder_prompt_tokens` (as for `generate`); inputs and targets are packed
  into one prefix-LM sequence per row.
  """
  config = _config(model)
  combine.check_mode(prompt_combination)
  inputs = _check_inputs(config, encoder_input_tokens, decoder_prompt_tokens)
  targets = jnp.asarray(target_tokens, jnp.int32)
  return _sequence_log_probs(
    params,
    inputs,
    targets,
    sites.from_keywords(prompt, prefix, prompt_lengths, adapters),
    config=config,
    prompt_combination=prompt_combination,
    output_ids=None if output_ids is None else tuple(int(i) for i in output_ids),
  )
