"""Prefix tuning (Li & Liang, 2021): learned keys and values at every attention layer.

A prefix is P extra key/value vectors in front of the keys and values of every
layer of a site: "encoder" (encoder self-attention), "decoder" (decoder
self-attention) and "cross" (encoder-decoder attention), each switched on in
`PrefixSettings.sites`. The frozen T5 takes them as its `prefix=` argument,
{site: {"key": [layers, P, heads, head_dim], "value": ...}}, which
`materialize` builds from the trainable tree.

Reparameterization (Li & Liang, section 4.3): optimizing the key/value
vectors directly is unstable, so they are trained as the output of an MLP,

    embedding [P, D] -> Linear(D, width) -> tanh -> Linear(width, layers x 2 x heads x head_dim)

and the MLP is folded away after training (`fold`): the folded tree is the
model's prefix dict itself, {site: {"key", "value"}}. The trainable tree is

    {"embedding": [P, D], "mlp": {site: {"hidden": {"kernel": [D, width], "bias": [width]},
                                         "output": {"kernel": [width, layers*2*H*Dh], "bias": [...]}}}}

Design decisions:

- One embedding, one MLP per site. Li & Liang's encoder-decoder code gives
  each site its own embedding and MLP; the MLP is what maps the shared input
  to site-specific keys and values (the sites differ in depth and role), while
  a second and third embedding would add 2 x P x D parameters and nothing the
  per-site first layer cannot express.
- Prefix keys carry no relative position bias and are visible to every query
  (unless masked). They are not positions of the sequence: with zero bias a
  prefix attends the same way from every query position, in the encoder
  (bidirectional buckets) as in the decoder (causal buckets), and the prefix
  leaves the relative positions of the real tokens untouched. Treating them as
  positions -P..-1 (what Hugging Face's cache does with PEFT prefix tuning)
  would make far queries see them through T5's saturated distance buckets and
  tie a prefix to where the input starts. A constant bias per head adds
  nothing a learned key cannot already express.
- With `reparameterize=False` the trainable tree is the folded one,
  initialized by folding a freshly initialized MLP (so both start from the
  same distribution).

A user hands a folded prefix in as arrays named "<site>/key" and "<site>/value"
[layers, P, heads, head_dim] (any of the sites, one P): what the export holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods.base import Limits, Method, PromptError
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.t5 import PREFIX_SITES, Prefix

Array = jax.Array
PyTree = Any


# Its gin name before it joined the methods, prompt_tuning.prefixes.PrefixSettings, is still read, with a warning
# (prompt_tuning.gin_registry).
@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class PrefixSettings(Method):
  """What prefix tuning trains.

  Attributes:
    length: prefix vectors P per layer.
    sites: which attentions get a prefix: any of "encoder", "decoder", "cross"
      (a decoder-only model has only "decoder").
    mlp_width: hidden width of the reparameterization MLP (Li & Liang: 512).
    reparameterize: train through the MLP (True) or the key/value vectors directly.
  """

  length: int
  sites: tuple[str, ...] = PREFIX_SITES
  mlp_width: int = 512
  reparameterize: bool = True
  name = "prefix"
  leaves = tuple((s, n) for s in ("self_attention", "cross_attention") for n in ("prefix_key", "prefix_value"))
  leaves += (("self_attention", "prefix_mask"), ("cross_attention", "prefix_mask"))

  def __post_init__(self):
    object.__setattr__(self, "sites", tuple(self.sites))  # gin and JSON hand lists over
    if self.length < 1:
      raise ValueError(f"PrefixSettings.length must be >= 1, got {self.length}.")
    if self.mlp_width < 1:
      raise ValueError(f"PrefixSettings.mlp_width must be >= 1, got {self.mlp_width}.")
    unknown = [s for s in self.sites if s not in PREFIX_SITES]
    if unknown or not self.sites or len(set(self.sites)) != len(self.sites):
      raise ValueError(
        f"PrefixSettings.sites={self.sites!r}: give each of {PREFIX_SITES} at most once, and at least one."
      )

  def init(self, rng: Array, backbone: PyTree, config: T5Config) -> PyTree:
    del backbone
    return init_prefix(rng, self, config)

  def adapters(self, params: PyTree, config: T5Config, task_ids: Array | None = None) -> sites.Adapters:
    """The attention prefix sites, from the MLP or from a folded tree."""
    del task_ids
    return sites.from_keywords(prefix=materialize(params, self, config))

  def fold(self, params: PyTree, config: T5Config) -> PyTree:
    return fold(params, self, config)

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    config = limits.config
    layers = {s: _layers(s, config) for s in model_sites(config)}
    expected = {f"{site}/{n}" for site in layers for n in ("key", "value")}
    unknown = set(arrays) - expected
    if unknown or not arrays:
      raise PromptError(
        f"method 'prefix' takes arrays named <site>/key and <site>/value for sites {sorted(layers)}; "
        f"got {sorted(arrays)}."
      )
    lengths = set()
    for site in {name.split("/")[0] for name in arrays}:
      if f"{site}/key" not in arrays or f"{site}/value" not in arrays:
        raise PromptError(f"prefix site {site!r} needs both '{site}/key' and '{site}/value'.")
      want = (layers[site], config.num_heads, config.head_dim)
      for name in (f"{site}/key", f"{site}/value"):
        shape = arrays[name].shape
        if len(shape) != 4 or (shape[0], shape[2], shape[3]) != want:
          raise PromptError(
            f"{name!r} has shape {list(shape)}; this backbone needs [{want[0]}, P, {want[1]}, {want[2]}] "
            "(layers, prefix length, heads, head_dim)."
          )
        lengths.add(shape[1])
    if len(lengths) != 1:
      raise PromptError(f"the prefix sites have different lengths {sorted(lengths)}; use one prefix length.")
    length = lengths.pop()
    if not 1 <= length <= limits.width("prefix"):
      raise PromptError(
        f"the prefix has {length} vectors; this server takes 1 to {limits.width('prefix')} "
        f"(restart it with a larger {limits.setting('prefix')})."
      )

  @classmethod
  def entry(cls, arrays: Mapping[str, np.ndarray]) -> sites.Adapters:
    sites_given = {name.split("/")[0] for name in arrays}
    return sites.from_keywords(prefix={s: {n: arrays[f"{s}/{n}"] for n in ("key", "value")} for s in sites_given})


def model_sites(config: T5Config) -> tuple[str, ...]:
  """The prefix sites (`PREFIX_SITES`) the model has: each attention of each of its stacks."""
  return tuple(s for s in PREFIX_SITES if sites.PREFIX_SITES[s][1] in config.attentions(sites.PREFIX_SITES[s][0]))


def _check_sites(settings: PrefixSettings, config: T5Config) -> None:
  available = model_sites(config)
  if set(settings.sites) - set(available):
    raise ValueError(
      f"prefix sites {settings.sites} on a model whose attentions are the prefix sites {available} only (a "
      f"decoder-only model has decoder self-attention only); use PrefixSettings(sites={available})."
    )


def _layers(site: str, config: T5Config) -> int:
  return config.depth(sites.PREFIX_SITES[site][0])


def _output_width(site: str, config: T5Config) -> int:
  return _layers(site, config) * 2 * config.num_heads * config.head_dim


def _dense(rng: Array, fan_in: int, features: int) -> dict[str, Array]:
  kernel = jax.random.normal(rng, (fan_in, features), jnp.float32) * fan_in**-0.5
  return {"kernel": kernel, "bias": jnp.zeros((features,), jnp.float32)}


def _init_reparameterized(rng: Array, settings: PrefixSettings, config: T5Config) -> PyTree:
  rngs = jax.random.split(rng, 1 + 2 * len(settings.sites))
  embedding = jax.random.normal(rngs[0], (settings.length, config.emb_dim), jnp.float32)  # [P, D]
  mlp = {}
  for i, site in enumerate(settings.sites):
    mlp[site] = {
      "hidden": _dense(rngs[1 + 2 * i], config.emb_dim, settings.mlp_width),
      "output": _dense(rngs[2 + 2 * i], settings.mlp_width, _output_width(site, config)),
    }
  return {"embedding": embedding, "mlp": mlp}


def init_prefix(rng: Array, settings: PrefixSettings, config: T5Config) -> PyTree:
  """Fresh trainable prefix parameters (float32).

  Returns:
    {"embedding": [P, D], "mlp": {site: ...}} when reparameterized, else the
    folded tree {site: {"key": [layers, P, H, Dh], "value": ...}}.

  Raises:
    ValueError: sites the model does not have.
  """
  _check_sites(settings, config)
  params = _init_reparameterized(rng, settings, config)
  return params if settings.reparameterize else fold(params, settings, config)


def _site_prefix(embedding: Array, mlp: PyTree, site: str, config: T5Config) -> dict[str, Array]:
  """One site's keys and values from the MLP: [P, D] -> {"key", "value": [layers, P, H, Dh]}."""
  hidden = jnp.tanh(embedding @ mlp["hidden"]["kernel"] + mlp["hidden"]["bias"])  # [P, width]
  out = hidden @ mlp["output"]["kernel"] + mlp["output"]["bias"]  # [P, layers * 2 * H * Dh]
  out = out.reshape(embedding.shape[0], _layers(site, config), 2, config.num_heads, config.head_dim)
  out = jnp.transpose(out, (2, 1, 0, 3, 4))  # [2, layers, P, H, Dh]
  return {"key": out[0], "value": out[1]}


def is_folded(prefix_params: PyTree) -> bool:
  """True for a folded tree ({site: {"key", "value"}}), False for a reparameterized one."""
  return "embedding" not in prefix_params


def _check_folded(prefix_params: PyTree, settings: PrefixSettings, config: T5Config) -> None:
  if set(prefix_params) != set(settings.sites):
    raise ValueError(
      f"the folded prefix has sites {sorted(prefix_params)} but PrefixSettings.sites is {settings.sites}; "
      "use the settings the prefix was trained with."
    )
  for site in settings.sites:
    expected = (_layers(site, config), settings.length, config.num_heads, config.head_dim)
    for name in ("key", "value"):
      shape = tuple(prefix_params[site][name].shape)
      if shape != expected:
        raise ValueError(
          f"prefix[{site!r}][{name!r}] has shape {shape}; expected {expected} (layers, PrefixSettings.length, "
          "heads, head_dim) for this backbone and settings."
        )


def _check_reparameterized(prefix_params: PyTree, settings: PrefixSettings, config: T5Config) -> None:
  if set(prefix_params["mlp"]) != set(settings.sites):
    raise ValueError(
      f"the prefix MLPs are for sites {sorted(prefix_params['mlp'])} but PrefixSettings.sites is {settings.sites}; "
      "use the settings the prefix was trained with."
    )
  expected = (settings.length, config.emb_dim)
  if tuple(prefix_params["embedding"].shape) != expected:
    raise ValueError(
      f"the prefix embedding has shape {tuple(prefix_params['embedding'].shape)}; expected {expected} "
      "(PrefixSettings.length, the backbone's embedding width)."
    )


def materialize(prefix_params: PyTree, settings: PrefixSettings, config: T5Config) -> Prefix:
  """The model's `prefix=` argument from a reparameterized or a folded tree.

  Returns:
    {site: {"key": [layers, P, H, Dh], "value": [layers, P, H, Dh]}} (float32).

  Raises:
    ValueError: a tree that does not match the settings and the backbone.
  """
  _check_sites(settings, config)
  if is_folded(prefix_params):
    _check_folded(prefix_params, settings, config)
    return {
      site: {n: jnp.asarray(prefix_params[site][n], jnp.float32) for n in ("key", "value")} for site in settings.sites
    }
  _check_reparameterized(prefix_params, settings, config)
  embedding = jnp.asarray(prefix_params["embedding"], jnp.float32)
  return {site: _site_prefix(embedding, prefix_params["mlp"][site], site, config) for site in settings.sites}


def fold(prefix_params: PyTree, settings: PrefixSettings, config: T5Config) -> Prefix:
  """Folds the MLP away: the plain key/value arrays per site, `materialize(fold(p)) == materialize(p)`.

  The folded tree is what to keep after training (and what inference needs):
  sites x layers x 2 x P x H x Dh numbers instead of the MLP.
  """
  return materialize(prefix_params, settings, config)
