"""IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", section 3.3): learned vectors that rescale the keys and values of every attention and the hidden
activations of every feed-forward block of the frozen T5.

    attention: softmax(Q (l_k * K)^T) (l_v * V)        feed-forward: (l_ff * act(x W_1)) W_2

The vectors start at ones (the model unchanged) and are the only trained
numbers: per layer 2 x heads x head_dim per attention and mlp_dim per MLP. The
trainable tree has the layout of the adapter sites it feeds
(`prompt_tuning.models.adapters`), so `adapters` is the tree itself:

    {"encoder": {"self_attention": {"key_scale": [L, H*Dh], "value_scale": [L, H*Dh]}, "mlp": {"scale": [L, mlp]}},
     "decoder": {"self_attention": {...}, "cross_attention": {...}, "mlp": {...}}}

A decoder-only model has no cross-attention. There is nothing to fold; the
export is the tree as `ia3.safetensors` and one `.npy` per vector set. Its
trainable tree has the layout of its sites, so what a user hands in (arrays
named by site path, "decoder/cross_attention/key_scale", any subset: a missing
scale is ones) is checked and read by `Method`'s defaults.
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from prompt_tuning.methods.base import Method, PyTree
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config

ATTENTIONS = ("self_attention", "cross_attention")


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class IA3(Method):
  """Rescaling vectors at the chosen sites.

  Attributes:
    attention: rescale attention keys and values (l_k, l_v).
    mlp: rescale the feed-forward activations (l_ff).
  """

  attention: bool = True
  mlp: bool = True
  name = "ia3"
  leaves = tuple((site, n) for site in ATTENTIONS for n in ("key_scale", "value_scale")) + (("mlp", "scale"),)

  def __post_init__(self):
    if not (self.attention or self.mlp):
      raise ValueError("IA3(attention=False, mlp=False) rescales nothing; switch on attention or mlp.")

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    del rng, backbone
    kv = config.num_heads * config.head_dim
    tree = {}
    for stack in config.stacks:
      layers = config.depth(stack)
      node = {}
      if self.attention:
        for attention in config.attentions(stack):
          node[attention] = {name: jnp.ones((layers, kv), jnp.float32) for name in ("key_scale", "value_scale")}
      if self.mlp:
        node["mlp"] = {"scale": jnp.ones((layers, config.mlp_dim), jnp.float32)}
      tree[stack] = node
    return tree

  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None) -> sites.Adapters:
    del config, task_ids
    return params
