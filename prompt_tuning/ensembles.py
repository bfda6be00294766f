"""Many prompts through one frozen model: mixed batches and prompt ensembles.

Mixed batches: every row carries its own prompt, its own prefix, or both
(mixed-task and per-user inference). `stack_prompts` pads prompts of
different lengths into [B, P_max, D] plus `prompt_lengths` [B] (0: no
prompt); `stack_prefixes` stacks per-row prefixes into
[layers, B, P_max, H, Dh] with a "mask" [B, P_max] per site (all False: no
prefix at that site). Every row then computes exactly what it computes alone.

Prompt ensembles (Lester et al. 2021, "Prompt Ensembling"): the same input
under K prompts in one forward pass, row b * K + k holding input b with
prompt k, combined

- by majority vote over the decoded outputs (`ensemble_generate`), or
- by the mean over prompts of each candidate label's log-probability
  (`ensemble_classify`; rank classification).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.t5 import T5, Prefix

Array = jax.Array


# ---------------------------------------------------------------------------
# Mixed batches.


def stack_prompts(prompts: Sequence[Array | None]) -> tuple[Array, Array]:
  """One prompt per row (None: no prompt) -> (prompt [B, P_max, D] float32, prompt_lengths int [B]).

  Pass both to the model (`prompt=`, `prompt_lengths=`); shorter prompts are
  padded with zeros that the model never attends to.

  Raises:
    ValueError: no prompt at all, or prompts of different widths.
  """
  shapes = {np.shape(p)[1] for p in prompts if p is not None}
  if len(shapes) != 1:
    raise ValueError(f"stack_prompts needs at least one prompt and one width D for all; got widths {sorted(shapes)}.")
  width = shapes.pop()
  longest = max(np.shape(p)[0] for p in prompts if p is not None)
  rows, lengths = [], []
  for p in prompts:
    p = jnp.zeros((0, width), jnp.float32) if p is None else jnp.asarray(p, jnp.float32)
    rows.append(jnp.pad(p, ((0, longest - p.shape[0]), (0, 0))))
    lengths.append(p.shape[0])
  return jnp.stack(rows), jnp.asarray(lengths, jnp.int32)


def _site_shape(prefixes: Sequence[Prefix | None], site: str) -> tuple[int, tuple[int, int, int]]:
  """The longest prefix at `site` among the rows, and its (layers, heads, head_dim)."""
  present = [p[site]["key"].shape for p in prefixes if p and p.get(site) is not None]
  layers, _, heads, head_dim = present[0]
  return max(shape[1] for shape in present), (layers, heads, head_dim)


def stack_prefixes(prefixes: Sequence[Prefix | None]) -> Prefix:
  """One prefix per row (each {site: {"key", "value": [layers, P_i, H, Dh]}}, or None) -> a per-row prefix.

  Returns:
    {site: {"key", "value": [layers, B, P_max, H, Dh], "mask": bool [B, P_max]}}
    over every site any row uses; a row without that site has an all-False mask.
  """
  sites = [s for s in ("encoder", "decoder", "cross") if any(p and p.get(s) is not None for p in prefixes)]
  if not sites:
    raise ValueError("stack_prefixes needs at least one row with a prefix.")
  out = {}
  for site in sites:
    longest, (layers, heads, head_dim) = _site_shape(prefixes, site)
    keys, values, masks = [], [], []
    for p in prefixes:
      kv = p.get(site) if p else None
      if kv is None:
        kv = {n: jnp.zeros((layers, 0, heads, head_dim), jnp.float32) for n in ("key", "value")}
      length = kv["key"].shape[1]
      pad = ((0, 0), (0, longest - length), (0, 0), (0, 0))
      keys.append(jnp.pad(jnp.asarray(kv["key"], jnp.float32), pad))
      values.append(jnp.pad(jnp.asarray(kv["value"], jnp.float32), pad))
      masks.append(jnp.arange(longest) < length)
    out[site] = {"key": jnp.stack(keys, axis=1), "value": jnp.stack(values, axis=1), "mask": jnp.stack(masks)}
  return out


# ---------------------------------------------------------------------------
# Prompt ensembles.


def ensemble_rows(tokens: Array, prompts: Array) -> tuple[Array, Array]:
  """The same inputs under K prompts: tokens [B, T], prompts [K, P, D] -> ([B*K, T], [B*K, P, D]).

  Row b * K + k holds input b with prompt k.
  """
  tokens, prompts = jnp.asarray(tokens), jnp.asarray(prompts)
  if prompts.ndim != 3:
    raise ValueError(f"prompts has shape {prompts.shape}; an ensemble is [K, P, D] (K prompts).")
  batch, k = tokens.shape[0], prompts.shape[0]
  return jnp.repeat(tokens, k, axis=0), jnp.tile(prompts, (batch, 1, 1))


def majority_vote(tokens: Array) -> tuple[Array, Array]:
  """The most frequent sequence among K decoded ones per input.

  Args:
    tokens: int [B, K, L] decoded sequences (0 after EOS, as `decoding` returns them).

  Returns:
    (winner [B, L], votes int [B]: how many of the K agree with it). Ties go
    to the sequence of the lowest-numbered prompt.
  """
  tokens = jnp.asarray(tokens)
  same = jnp.all(tokens[:, :, None, :] == tokens[:, None, :, :], axis=-1)  # [B, K, K]
  votes = jnp.sum(same, axis=-1)  # [B, K]
  best = jnp.argmax(votes, axis=-1)  # first maximum: the lowest prompt index
  winner = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
  return winner, jnp.take_along_axis(votes, best[:, None], axis=1)[:, 0]


class EnsembleOutput(NamedTuple):
  tokens: Array  # int [B, L] the majority vote
  votes: Array  # int [B] prompts agreeing with it
  all_tokens: Array  # int [B, K, L] each prompt's output
  all_scores: Array  # float [B, K]


def _input_kwargs(config: T5Config, tokens: Array) -> dict[str, Array | None]:
  if config.decoder_only:
    return {"encoder_input_tokens": None, "decoder_prompt_tokens": tokens}
  return {"encoder_input_tokens": tokens}


def _config(model: T5 | T5Config) -> T5Config:
  return model.config if isinstance(model, T5) else model


def ensemble_generate(
  model: T5 | T5Config,
  params,
  inputs: Array,
  prompts: Array,
  *,
  settings: decoding.DecodingSettings = decoding.DecodingSettings(),
  prompt_combination: str = "prefix",
  rng: Array | None = None,
) -> EnsembleOutput:
  """Decodes every input under each of K prompts in one batch, then takes the majority vote.

  Args:
    model: the T5 (or its config), encoder-decoder or decoder-only.
    params: the frozen backbone.
    inputs: int [B, T] encoder inputs (decoder-only: the prefix-LM inputs).
    prompts: [K, P, D] the ensemble's prompts.
    settings, prompt_combination, rng: as for `decoding.generate`.
  """
  config = _config(model)
  tokens, prompt = ensemble_rows(inputs, prompts)
  out = decoding.generate(
    config,
    params,
    settings=settings,
    prompt=prompt,
    prompt_combination=prompt_combination,
    rng=rng,
    **_input_kwargs(config, tokens),
  )
  batch, k = jnp.shape(inputs)[0], jnp.shape(prompts)[0]
  all_tokens = out.tokens.reshape(batch, k, -1)
  winner, votes = majority_vote(all_tokens)
  return EnsembleOutput(winner, votes, all_tokens, out.scores.reshape(batch, k))


def candidate_log_probs(
  model: T5 | T5Config, params, inputs: Array, candidates: Array, prompts: Array, *, prompt_combination: str = "prefix"
) -> Array:
  """log p(candidate | input, prompt) for every input, prompt and candidate, in one forward pass.

  Args:
    model: the T5 (or its config).
    params: the frozen backbone.
    inputs: int [B, T] inputs.
    candidates: int [C, L] candidate targets (e.g. the tokenized class labels
      with EOS), 0-padded.
    prompts: [K, P, D].
    prompt_combination: where the prompts join the inputs.

  Returns:
    float32 [B, K, C].
  """
  config = _config(model)
  candidates = jnp.asarray(candidates, jnp.int32)
  num_candidates = candidates.shape[0]
  tokens, prompt = ensemble_rows(inputs, prompts)  # [B*K, T], [B*K, P, D]
  tokens, prompt = jnp.repeat(tokens, num_candidates, axis=0), jnp.repeat(prompt, num_candidates, axis=0)
  targets = jnp.tile(candidates, (tokens.shape[0] // num_candidates, 1))  # [B*K*C, L]
  kwargs = _input_kwargs(config, tokens)
  logp = decoding.sequence_log_probs(
    config,
    params,
    kwargs.pop("encoder_input_tokens"),
    targets,
    prompt=prompt,
    prompt_combination=prompt_combination,
    **kwargs,
  )
  return logp.reshape(jnp.shape(inputs)[0], jnp.shape(prompts)[0], num_candidates)


def mean_log_prob_choice(log_probs: Array) -> tuple[Array, Array]:
  """Combines per-prompt candidate log-probabilities [B, K, C]: (argmax of the mean int [B], the mean [B, C]).

  The mean of log-probabilities is the log of the geometric mean of the
  probabilities: one confident prompt can outvote several hesitant ones,
  unlike a majority vote over each prompt's best candidate.
  """
  mean = jnp.mean(jnp.asarray(log_probs), axis=1)  # [B, C]
  return jnp.argmax(mean, axis=-1), mean


def ensemble_classify(
  model: T5 | T5Config, params, inputs: Array, candidates: Array, prompts: Array, *, prompt_combination: str = "prefix"
) -> tuple[Array, Array]:
  """Rank classification by the candidates' log-probability, averaged over the K prompts.

  Returns:
    (predicted candidate index int [B], mean log-probability float32 [B, C]).
  """
  logp = candidate_log_probs(model, params, inputs, candidates, prompts, prompt_combination=prompt_combination)
  return mean_log_prob_choice(logp)
