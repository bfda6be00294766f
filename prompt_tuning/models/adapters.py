"""The sites where tuned vectors reach the frozen T5, and the one pytree that carries them.

Every tuning method (`prompt_tuning.methods`) turns its trainable tree into an
*adapters* pytree; the backbone reads it by site and knows nothing of methods:

    adapters = {
      "input": {"prompt": [P, D] | [B, P, D],        # joins the embedded input (prompt_tuning.combine)
                "prompt_lengths": int [B]},           # optional: prompt vectors used by each row
      "encoder": {                                    # per-layer sites; every leaf leads with [layers]
        "self_attention": {"prefix_key": [L, P, H, Dh], "prefix_value": [L, P, H, Dh], "prefix_mask": bool [L, P],
                           "key_scale": [L, H*Dh], "value_scale": [L, H*Dh],
                           "lora_query_a": [L, D, r], "lora_query_b": [L, r, H*Dh],   # q += (x @ A) @ B (LoRA),
                           "lora_value_a": [L, D, r], "lora_value_b": [L, r, H*Dh]},  # v likewise; zeros: none
        "mlp": {"scale": [L, mlp]},
        "hidden": {"replace": [L, P, D], "replace_mask": bool [L, P],   # at the prompt positions, before layer i
                   "add": [L, P, D]},                                  # (either or both; see T5's _per_layer_prompt)
      },
      "decoder": {"self_attention": {...}, "cross_attention": {...}, "mlp": {...}},
    }

Any leaf may instead carry a batch axis (right after the layer axis, or
first for "input"): [L, B, P, H, Dh], [L, B, H*Dh], ..., one set of vectors
per row, so rows tuned by different methods or tasks share one batch. A
decoder-only model has the "input" and "decoder" sites (no cross-attention).

Adding a site is declaring its leaf here (`LEAF_RANKS`) and reading it in the
layer that owns it; methods then feed it without touching the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Adapters = dict[str, Any]

# Sub-sites of each stack, and the leaves each accepts with their rank when shared by every row (one
# more when per row). The leading layer axis is part of the rank.
# LoRA's low-rank deltas of the query and value projections (A [L, D, r], B [L, r, H*Dh]); identity: zeros. The
# value delta applies before the KV cache (the cached values carry it).
LORA_LEAVES = {"lora_query_a": 3, "lora_query_b": 3, "lora_value_a": 3, "lora_value_b": 3}
_ATTENTION = {"prefix_key": 4, "prefix_value": 4, "prefix_mask": 2, "key_scale": 2, "value_scale": 2, **LORA_LEAVES}
LEAF_RANKS = {
  "self_attention": _ATTENTION,
  "cross_attention": _ATTENTION,
  "mlp": {"scale": 2},
  "hidden": {"replace": 3, "replace_mask": 2, "add": 3},
}
STACK_SITES = {"encoder": ("self_attention", "mlp", "hidden"), "decoder": ("self_attention", "cross_attention", "mlp")}
INPUT_RANKS = {"prompt": 2, "prompt_lengths": 0}

# The `prefix=` keyword's sites (T5.apply(..., prefix={site: {"key", "value", "mask"}})) and where they land.
PREFIX_SITES = {"encoder": ("encoder", "self_attention"), "decoder": ("decoder", "self_attention")}
PREFIX_SITES["cross"] = ("decoder", "cross_attention")


def stacks(decoder_only: bool) -> tuple[str, ...]:
  return ("decoder",) if decoder_only else ("encoder", "decoder")


def merge(*trees: Adapters | None) -> Adapters:
  """Nested union of adapter trees (one per method).

  Raises:
    ValueError: two trees feed the same leaf (two methods cannot own one site).
  """
  out: Adapters = {}
  for tree in trees:
    if tree:
      _merge_into(out, tree, ())
  return out


def _merge_into(out: dict, tree: Mapping, path: tuple[str, ...]) -> None:
  for key, value in tree.items():
    if value is None:
      continue
    if isinstance(value, Mapping):
      _merge_into(out.setdefault(key, {}), value, path + (key,))
    elif key in out:
      raise ValueError(
        f"two tuning methods feed the adapter site {'/'.join(path + (key,))}; each site takes one method's vectors."
      )
    else:
      out[key] = value


def from_keywords(prompt=None, prefix=None, prompt_lengths=None, adapters: Adapters | None = None) -> Adapters:
  """The adapters pytree from the `prompt=`, `prefix=`, `prompt_lengths=` keywords and an `adapters=` tree.

  `prefix` is {site: {"key", "value": [L, P, H, Dh] | [L, B, P, H, Dh], "mask": [P] | [B, P]}} with sites
  "encoder", "decoder" and "cross" (see `prompt_tuning.methods.prefix`).
  """
  keywords: Adapters = {}
  if prompt is not None:
    keywords["input"] = {"prompt": prompt}
    if prompt_lengths is not None:
      keywords["input"]["prompt_lengths"] = prompt_lengths
  if prefix:
    unknown = set(prefix) - set(PREFIX_SITES)
    if unknown:
      raise ValueError(f"Unknown prefix sites {sorted(unknown)}; use any of {tuple(PREFIX_SITES)}.")
    for site, kv in prefix.items():
      if kv is None:
        continue
      stack, sub = PREFIX_SITES[site]
      keywords.setdefault(stack, {})[sub] = prefix_leaves(kv["key"], kv["value"], kv.get("mask"))
  return merge(keywords, adapters)


def prefix_leaves(key: Array, value: Array, mask: Array | None = None) -> dict[str, Array]:
  """An attention site's prefix leaves; a mask [P] or [B, P] gets the layer axis of the keys."""
  leaves = {"prefix_key": key, "prefix_value": value}
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    leaves["prefix_mask"] = jnp.broadcast_to(mask, (key.shape[0],) + mask.shape)
  return leaves


def layer(adapters: Adapters | None, stack: str, index: int) -> Adapters:
  """The adapters of layer `index` of `stack`: every per-layer leaf indexed at `index`."""
  if not adapters or stack not in adapters:
    return {}
  return jax.tree.map(lambda x: x[index], adapters[stack])


def is_per_row(sub_site: str, name: str, leaf: Array) -> bool:
  """Whether a leaf carries a batch axis (see the module docstring)."""
  return leaf.ndim > _rank(sub_site, name)


def _rank(sub_site: str, name: str) -> int:
  if sub_site == "input":
    return INPUT_RANKS[name]
  return LEAF_RANKS[sub_site][name]


def expand_rows(adapters: Adapters | None, times: int) -> Adapters | None:
  """Repeats every per-row leaf `times` times along its batch axis (rows -> rows x beams)."""
  if not adapters or times == 1:
    return adapters
  out: Adapters = {}
  for stack, sites in adapters.items():
    out[stack] = {}
    for sub, leaves in sites.items():
      if stack == "input":
        out[stack][sub] = jnp.repeat(leaves, times, axis=0) if is_per_row("input", sub, leaves) else leaves
        continue
      out[stack][sub] = {n: jnp.repeat(x, times, axis=1) if is_per_row(sub, n, x) else x for n, x in leaves.items()}
  return out


def check(adapters: Adapters | None, config) -> None:
  """Refuses sites the model lacks and per-layer leaves of the wrong shape, saying what was expected.

  Raises:
    ValueError: an unknown stack, sub-site or leaf, or a leaf whose layer axis or trailing shape is wrong.
  """
  if not adapters:
    return
  allowed = ("input",) + stacks(config.decoder_only)
  unknown = set(adapters) - set(allowed)
  if unknown:
    raise ValueError(f"Unknown adapter sites {sorted(unknown)} for this model; use any of {allowed}.")
  for name in set(adapters.get("input", {})) - set(INPUT_RANKS):
    raise ValueError(f"Unknown input adapter {name!r}; use any of {tuple(INPUT_RANKS)}.")
  if "hidden" in adapters.get("encoder", {}) and "prompt" not in adapters.get("input", {}):
    raise ValueError(
      "the encoder/hidden site (per-layer prompts) needs a prompt in the input site: it rewrites the prompt "
      "positions, and without a prompt there are none."
    )
  for stack in allowed[1:]:
    layers = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
    subs = tuple(s for s in STACK_SITES[stack] if not (config.decoder_only and s == "cross_attention"))
    for sub, leaves in adapters.get(stack, {}).items():
      if sub not in subs:
        raise ValueError(f"Unknown adapter site {stack}/{sub} for this model; use any of {subs}.")
      _check_prefix(stack, sub, leaves, config, layers)
      _check_lora(stack, sub, leaves, config)
      for name, leaf in leaves.items():
        if name not in LEAF_RANKS[sub]:
          raise ValueError(f"Unknown adapter {stack}/{sub}/{name}; this site takes {tuple(LEAF_RANKS[sub])}.")
        rank = LEAF_RANKS[sub][name]
        if leaf.ndim not in (rank, rank + 1) or leaf.shape[0] != layers:
          raise ValueError(
            f"adapter {stack}/{sub}/{name} has shape {tuple(leaf.shape)}; expected {rank} axes (shared) or "
            f"{rank + 1} (per row), the first being the {layers} layers of the {stack}."
          )


def _check_prefix(stack: str, sub: str, leaves: Mapping[str, Array], config, layers: int) -> None:
  if "prefix_key" not in leaves:
    return
  key, value, mask = leaves["prefix_key"], leaves.get("prefix_value"), leaves.get("prefix_mask")
  heads, head_dim = config.num_heads, config.head_dim
  if (
    value is None
    or key.ndim not in (4, 5)
    or key.shape[0] != layers
    or key.shape[-2:] != (heads, head_dim)
    or value.shape != key.shape
  ):
    value_shape = None if value is None else tuple(value.shape)
    raise ValueError(
      f"prefix at {stack}/{sub} has key {tuple(key.shape)} and value {value_shape}; expected [{layers}, P, {heads}, "
      f"{head_dim}] or [{layers}, batch, P, {heads}, {head_dim}] (layers, [batch,] prefix length, heads, head_dim) "
      "for both."
    )
  if mask is not None and mask.shape[-1] != key.shape[-3]:
    raise ValueError(
      f"the prefix mask at {stack}/{sub} has shape {tuple(mask.shape)}; expected [P] or [batch, P] with "
      f"P = {key.shape[-3]} (which prefix vectors each row uses)."
    )


def _check_lora(stack: str, sub: str, leaves: Mapping[str, Array], config) -> None:
  for projection in ("query", "value"):
    a, b = leaves.get(f"lora_{projection}_a"), leaves.get(f"lora_{projection}_b")
    if a is None and b is None:
      continue
    joined = config.num_heads * config.head_dim
    if (
      a is None
      or b is None
      or a.ndim != b.ndim
      or a.shape[-2] != config.emb_dim
      or b.shape[-1] != joined
      or a.shape[-1] != b.shape[-2]
      or a.shape[:-2] != b.shape[:-2]
    ):
      shapes = [None if x is None else tuple(x.shape) for x in (a, b)]
      raise ValueError(
        f"LoRA at {stack}/{sub} has lora_{projection}_a, lora_{projection}_b of shapes {shapes[0]}, {shapes[1]}; "
        f"expected [layers, [batch,] {config.emb_dim}, r] and [layers, [batch,] r, {joined}] (embedding width, "
        "rank, heads x head_dim), both given, with the same rank."
      )
