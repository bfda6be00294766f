"""The sites where tuned vectors reach the frozen T5, the one pytree that carries them, and the contract of its leaves.

Every tuning method (`prompt_tuning.methods`) turns its trainable tree into an
*adapters* pytree; the backbone reads it by site and knows nothing of methods:

    adapters = {
      "input": {"prompt": [P, D] | [B, P, D],        # joins the embedded input (prompt_tuning.combine); packed
                                                      # rows also take [B, S, P, D], one per segment
                "prompt_lengths": int [B]},           # optional: prompt vectors used by each row
      "encoder": {                                    # per-layer sites; every leaf leads with [layers]
        "self_attention": {"prefix_key": [L, P, H, Dh], "prefix_value": [L, P, H, Dh], "prefix_mask": bool [L, P],
                           "key_scale": [L, H*Dh], "value_scale": [L, H*Dh],
                           "lora_query_a": [L, D, r], "lora_query_b": [L, r, H*Dh], "lora_value_a", "lora_value_b"},
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

The contract (`SITE_LEAVES`): every leaf is declared once, as a `Leaf`:

- its axes (`axes`, the rank is their number; "layers" first at the per-layer sites);
- its *identity*: the value that leaves the frozen model unchanged, what a row that does not use the leaf holds:
  0.0 (a prompt vector, an added hidden state, a LoRA delta), 1.0 (an IA3 scale), or `ABSENT` (a prefix or a
  replaced hidden state: there only where the leaf's mask, or the prompt's length, says so);
- its padded axis (`padded_axis`): a variable length ("prompt" P, "prefix" P, LoRA's "rank" r) that rows of one
  batch pad to a common width with the identity (zero rows of A and B add nothing; masked-out positions are
  unseen);
- for a mask or length leaf, the leaf it marks (`marks`): a padded row marks the positions the row filled;
- whether it applies before the KV cache (`cached`): folded into the cached keys/values by `T5.init_cache` (and
  by each decode step for self-attention), so `init_cache` must be given it, and a decode step reads the
  cross-attention cache as it is; otherwise it applies at every step.

Serving pads and stacks rows from this contract alone (`pad_row`): a method's rows need no code outside its
module. Adding a site is declaring its leaves here and reading them in the layer that owns them
(`prompt_tuning.models.layers`); methods then feed it without touching the model or the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.configs import T5Config

Array = jax.Array
Adapters = dict[str, Any]

ABSENT = "absent"  # a leaf's identity when its mask (or the prompt's length) decides where it exists
PADDED_AXES = ("prompt", "prefix", "rank")  # the variable-length axes; a server fixes a width for each


@dataclasses.dataclass(frozen=True)
class Leaf:
  """What one leaf of a site is (see the module docstring).

  Attributes:
    axes: names of its axes when shared by every row (no batch axis): "layers", "embed" (D), "heads", "head_dim",
      "kv" (heads x head_dim), "mlp", or a padded axis of `PADDED_AXES`.
    identity: 0.0, 1.0 or `ABSENT` for vectors; the unmarked value (False, 0) for a mask or a length.
    marks: for a mask (bool) or a length (int) leaf, the leaf of the same site whose filled positions it marks.
    cached: applied before the KV cache (see the module docstring).
  """

  axes: tuple[str, ...]
  identity: float | bool | int | str = 0.0
  marks: str | None = None
  cached: bool = False

  @property
  def rank(self) -> int:
    return len(self.axes)

  @property
  def padded_axis(self) -> int | None:
    """Index of the padded axis, None if every row has the same shape."""
    return next((i for i, a in enumerate(self.axes) if a in PADDED_AXES), None)

  @property
  def dtype(self):
    if isinstance(self.identity, bool):
      return np.bool_
    return np.int32 if isinstance(self.identity, int) and not isinstance(self.identity, bool) else np.float32

  @property
  def fill(self):
    return 0.0 if self.identity == ABSENT else self.identity


def _attention_leaves() -> dict[str, Leaf]:
  prefix = ("layers", "prefix", "heads", "head_dim")
  return {
    # Prefix tuning: extra keys/values every query sees, no position bias; applied after the cache.
    "prefix_key": Leaf(prefix, ABSENT),
    "prefix_value": Leaf(prefix, ABSENT),
    "prefix_mask": Leaf(("layers", "prefix"), False, marks="prefix_key"),
    # IA3: rescaled keys and values, applied as they are projected (before the cache).
    "key_scale": Leaf(("layers", "kv"), 1.0, cached=True),
    "value_scale": Leaf(("layers", "kv"), 1.0, cached=True),
    # LoRA: low-rank deltas x A B on the query (every step) and value (before the cache) projections.
    "lora_query_a": Leaf(("layers", "embed", "rank")),
    "lora_query_b": Leaf(("layers", "rank", "kv")),
    "lora_value_a": Leaf(("layers", "embed", "rank"), cached=True),
    "lora_value_b": Leaf(("layers", "rank", "kv"), cached=True),
  }


# Every site's leaves: the input site, then the sub-sites of the stacks (`STACK_SITES`).
SITE_LEAVES: dict[str, dict[str, Leaf]] = {
  "input": {
    "prompt": Leaf(("prompt", "embed"), ABSENT),
    "prompt_lengths": Leaf((), 0, marks="prompt"),
  },
  "self_attention": _attention_leaves(),
  "cross_attention": _attention_leaves(),
  "mlp": {"scale": Leaf(("layers", "mlp"), 1.0)},
  "hidden": {
    "replace": Leaf(("layers", "prompt", "embed"), ABSENT),
    "replace_mask": Leaf(("layers", "prompt"), False, marks="replace"),
    "add": Leaf(("layers", "prompt", "embed")),
  },
}
STACK_SITES = {"encoder": ("self_attention", "mlp", "hidden"), "decoder": ("self_attention", "cross_attention", "mlp")}

# Ranks (shared form; one more when per row), as the model's shape checks read them.
LEAF_RANKS = {
  sub: {n: leaf.rank for n, leaf in leaves.items()} for sub, leaves in SITE_LEAVES.items() if sub != "input"
}
INPUT_RANKS = {n: leaf.rank for n, leaf in SITE_LEAVES["input"].items()}

# The `prefix=` keyword's sites (T5.apply(..., prefix={site: {"key", "value", "mask"}})) and where they land.
PREFIX_SITES = {"encoder": ("encoder", "self_attention"), "decoder": ("decoder", "self_attention")}
PREFIX_SITES["cross"] = ("decoder", "cross_attention")

Path = tuple[str, ...]  # ("input", name) or (stack, sub-site, name)


def sub_sites(stack: str, config: T5Config | None = None) -> tuple[str, ...]:
  """The sub-sites of `stack` in the model `config` describes (only the attentions it has); None: in any model."""
  attentions = ("self_attention", "cross_attention") if config is None else config.attentions(stack)
  return tuple(s for s in STACK_SITES[stack] if s in attentions or not s.endswith("_attention"))


def leaf_of(path: Path) -> Leaf:
  """The declaration of the leaf at `path`."""
  return SITE_LEAVES[path[-2]][path[-1]]


def paths(leaves: Iterable[tuple[str, str]], config: T5Config | None = None) -> tuple[Path, ...]:
  """Every path of the model `config` describes (None: of any model) at which (sub-site, leaf) pairs exist:
  ("self_attention", "key_scale") is the encoder's and the decoder's; ("input", "prompt") is the input site's."""
  out = []
  for sub, name in leaves:
    if name not in SITE_LEAVES.get(sub, {}):
      raise ValueError(f"no adapter leaf {sub}/{name} is declared; declare it in SITE_LEAVES (models/adapters.py).")
    if sub == "input":
      out.append(("input", name))
      continue
    stacks = ("encoder", "decoder") if config is None else config.stacks
    out.extend((stack, sub, name) for stack in stacks if sub in sub_sites(stack, config))
  return tuple(dict.fromkeys(out))


def padded_axes(leaves: Iterable[tuple[str, str]]) -> set[str]:
  """The padded axes (of `PADDED_AXES`) that (sub-site, leaf) pairs have."""
  return {
    leaf.axes[leaf.padded_axis] for leaf in (SITE_LEAVES[s][n] for s, n in leaves) if leaf.padded_axis is not None
  }


def axis_sizes(config, stack: str | None, widths: Mapping[str, int]) -> dict[str, int]:
  """The size of every axis name of `Leaf.axes` for `config` (a T5Config) and the padded axes' `widths`."""
  layers = {"encoder": config.num_encoder_layers, "decoder": config.num_decoder_layers}.get(stack, 0)
  sizes = {"layers": layers, "embed": config.emb_dim, "heads": config.num_heads, "head_dim": config.head_dim}
  sizes.update(kv=config.num_heads * config.head_dim, mlp=config.mlp_dim)
  sizes.update({axis: int(widths.get(axis, 0)) for axis in PADDED_AXES})
  return sizes


def shape_of(path: Path, config, widths: Mapping[str, int]) -> tuple[int, ...]:
  """The shared shape of the leaf at `path` (a padded axis at its width)."""
  sizes = axis_sizes(config, None if path[0] == "input" else path[0], widths)
  return tuple(sizes[a] for a in leaf_of(path).axes)


def get(tree: Mapping | None, path: Path):
  node = tree or {}
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return node


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def flat_paths(tree: Mapping, prefix: Path = ()) -> list[Path]:
  """The paths of every leaf of an adapters tree."""
  out = []
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.extend(flat_paths(value, prefix + (key,)))
    elif value is not None:
      out.append(prefix + (key,))
  return out


def filled_length(path: Path, value) -> int:
  """The length a row fills along the leaf's padded axis (0 for a leaf without one)."""
  axis = leaf_of(path).padded_axis
  return 0 if axis is None else int(np.shape(value)[axis])


def pad_row(row: Adapters, served: Iterable[Path], config, widths: Mapping[str, int]) -> Adapters:
  """One row's adapters (no batch axis, any lengths) -> every served leaf at its full shape, as host arrays.

  A leaf the row does not give holds its identity; a given leaf is written at the start of its padded axis and
  the rest holds the identity; a mask or length leaf the row does not give marks the positions its leaf filled.
  So rows of any methods and lengths stack into one batch that computes what each row computes alone.

  Raises:
    ValueError: a leaf this server does not serve, or one whose shape does not fit (wrong axes, or longer
      than the width of its padded axis).
  """
  served = tuple(served)
  unknown = [p for p in flat_paths(row) if p not in served]
  if unknown:
    raise ValueError(f"adapter leaves {['/'.join(p) for p in unknown]} are not served here; serve their method.")
  out: Adapters = {}
  for path in served:
    leaf, full = leaf_of(path), shape_of(path, config, widths)
    array = np.full(full, leaf.fill, leaf.dtype)
    value = get(row, path)
    if value is not None:
      value = np.asarray(value)
      axis = leaf.padded_axis
      fits = value.ndim == len(full) and all(
        n <= m if i == axis else n == m for i, (n, m) in enumerate(zip(value.shape, full))
      )
      if not fits:
        raise ValueError(
          f"adapter {'/'.join(path)} has shape {list(value.shape)}; this server takes {list(full)} "
          f"(axes {leaf.axes}{'' if axis is None else f', {leaf.axes[axis]} at most {full[axis]}'})."
        )
      array[tuple(slice(0, n) for n in value.shape)] = value
    _set(out, path, array)
  for path in served:
    leaf = leaf_of(path)
    marked = get(row, path[:-1] + (leaf.marks,)) if leaf.marks else None
    if marked is None or get(row, path) is not None:
      continue
    length = filled_length(path[:-1] + (leaf.marks,), marked)
    if leaf.dtype is np.int32:
      _set(out, path, np.int32(length))
    else:
      get(out, path)[..., :length] = True
  return out


def per_row_layout(row_first: Adapters) -> Adapters:
  """Leaves with the row axis first -> the model's per-row layout (row axis after the layer axis)."""
  out = {}
  for stack, tree in row_first.items():
    out[stack] = tree if stack == "input" else jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)
  return out


def without_cached_cross_attention(adapters: Adapters) -> Adapters:
  """The adapters a decode step reads: cross-attention's `cached` leaves are in the cache already."""
  out = {}
  for stack, tree in adapters.items():
    out[stack] = dict(tree)
    if isinstance(tree, Mapping) and "cross_attention" in tree:
      kept = {n: v for n, v in tree["cross_attention"].items() if not SITE_LEAVES["cross_attention"][n].cached}
      if kept:
        out[stack]["cross_attention"] = kept
      else:
        del out[stack]["cross_attention"]
  return out


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
  allowed = ("input",) + config.stacks
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
    subs = sub_sites(stack, config)
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
