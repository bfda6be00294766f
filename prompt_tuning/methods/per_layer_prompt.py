"""Per-layer prompts (deep prompt tuning): a learned prompt at the input of *every* encoder layer.

Prompt tuning (Lester et al., 2021) trains P vectors at the input only; their
effect on deeper layers is whatever the frozen layers make of them. Here each
encoder layer i gets its own P vectors at the prompt positions, as the
reference implementation's `extended/` per-layer prompts and P-tuning v2 (Liu
et al., 2022, deep prompt tuning) do, in one of two modes:

- "replace": the hidden states of the prompt positions are replaced by
  prompts[i] before layer i (layer 0's are the input prompt itself);
- "add": prompts[i] is added to them before layer i >= 1 (layer 0 sees the
  input prompt prompts[0]); the deeper prompts start at zero, so training
  starts from plain prompt tuning.

Parameters: {"prompts": [L, P, D]} float32 (L encoder layers), logical axes
(None, "prompt", "prompt_embed"), replicated and unfactored. prompts[0]
feeds the "input" site, so it joins the input where the prompt combination
says and rows may use fewer vectors (`prompt_lengths`); the "hidden" site of
the encoder follows those positions. Encoder-decoder models only (the decoder
has no prompt positions to rewrite). Export: `per_layer_prompt.prompts.npy` [L, P, D]
and `per_layer_prompt.safetensors` (tensor "prompts", the mode in its metadata, which the server reads).
A user hands them in as one array named by its mode, "replace" or "add" [L, P, D].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning import prompts
from prompt_tuning.methods.base import Limits, Method, PromptError, PyTree, write_tree
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config

MODES = ("replace", "add")


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class PerLayerPrompt(Method):
  """Per-layer prompts of `length` vectors.

  Attributes:
    length: prompt positions P.
    initializer: makes the input prompt (and, in "replace" mode, every layer's), e.g. `prompts.sampled_vocab()`.
    mode: "replace" or "add" (see the module docstring).
  """

  length: int
  initializer: prompts.Initializer | None = None
  mode: str = "replace"
  name = "per_layer_prompt"
  leaves = (("input", "prompt"), ("input", "prompt_lengths"), ("hidden", "replace"), ("hidden", "replace_mask"))
  leaves += (("hidden", "add"),)

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f"PerLayerPrompt.length must be >= 1, got {self.length}.")
    if self.initializer is None:
      raise ValueError("PerLayerPrompt needs an initializer, e.g. @prompt_tuning.prompts.sampled_vocab().")
    if self.mode not in MODES:
      raise ValueError(f"PerLayerPrompt.mode={self.mode!r}; use one of {MODES}.")

  @property
  def input_length(self) -> int:
    return self.length

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    if "encoder" not in config.stacks:
      raise ValueError(
        "per-layer prompts rewrite the encoder's prompt positions, and a decoder-only model has no encoder; "
        "use prompt or prefix tuning for it."
      )
    embedding = backbone["token_embedder"]["embedding"]
    layers = config.num_encoder_layers
    if self.mode == "add":
      first = prompts.init_prompt(rng, self.initializer, embedding, self.length)
      rest = jnp.zeros((layers - 1, self.length, config.emb_dim), jnp.float32)
      return {"prompts": jnp.concatenate([first[None], rest], axis=0)}
    rngs = jax.random.split(rng, layers)
    return {"prompts": jnp.stack([prompts.init_prompt(r, self.initializer, embedding, self.length) for r in rngs])}

  def logical_axes(self, shapes: PyTree) -> PyTree:
    return {"prompts": PartitionSpec(None, *prompts.PROMPT_AXES)}

  def export(
    self, params: PyTree, config: T5Config, folder: str | Path, metadata: dict[str, str] | None = None
  ) -> list[Path]:
    return write_tree(self.fold(params, config), self.name, folder, metadata={**(metadata or {}), "mode": self.mode})

  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None) -> sites.Adapters:
    del task_ids
    layer_prompts = params["prompts"]  # [L, P, D] (or [L, B, P, D] per row)
    expected = (config.num_encoder_layers, self.length, config.emb_dim)
    if (layer_prompts.shape[0], layer_prompts.shape[-2], layer_prompts.shape[-1]) != expected:
      raise ValueError(
        f"per-layer prompts of shape {tuple(layer_prompts.shape)}; this backbone and PerLayerPrompt.length need "
        f"{expected} (encoder layers, length, embedding width)."
      )
    return _sites(layer_prompts, self.mode)

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    if len(arrays) != 1 or next(iter(arrays)) not in MODES:
      raise PromptError(
        f"method 'per_layer_prompt' takes one array named by its mode, 'replace' or 'add', [layers, P, "
        f"{limits.emb_dim}]; got {sorted(arrays)}."
      )
    ((name, array),) = arrays.items()
    shape, layers = array.shape, limits.config.num_encoder_layers
    if len(shape) != 3 or shape[0] != layers or shape[2] != limits.emb_dim or shape[1] < 1:
      raise PromptError(
        f"{name!r} has shape {list(shape)}; this backbone needs [{layers}, P, {limits.emb_dim}] "
        "(encoder layers, prompt length, embedding width)."
      )
    limits.check_prompt_length("the per-layer prompt", shape[1])

  @classmethod
  def entry(cls, arrays: Mapping[str, np.ndarray]) -> sites.Adapters:
    ((mode, layer_prompts),) = arrays.items()
    return _sites(np.asarray(layer_prompts), mode)

  @classmethod
  def read_export(cls, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> dict[str, np.ndarray]:
    if "prompts" not in tensors:
      return dict(tensors)  # a library entry: named by its mode already
    mode = metadata.get("mode")
    if mode not in MODES:
      raise PromptError(
        "per_layer_prompt.safetensors does not record its mode (exports before the server read it); upload it "
        "with PUT {'method': 'per_layer_prompt', 'arrays': {'replace' or 'add': [...]}}."
      )
    return {mode: tensors["prompts"]}


def _sites(layer_prompts, mode: str) -> sites.Adapters:
  """The input and hidden sites of per-layer prompts [L, P, D] (or [L, B, P, D]) in `mode`."""
  if mode == "add":
    hidden = {
      "add": layer_prompts.at[0].set(0.0) if isinstance(layer_prompts, jax.Array) else _zero_first(layer_prompts)
    }
  else:
    hidden = {"replace": layer_prompts}
  return {"input": {"prompt": layer_prompts[0]}, "encoder": {"hidden": hidden}}


def _zero_first(layer_prompts: np.ndarray) -> np.ndarray:
  """Layer 0 sees the input prompt as it is: its "add" vectors are zero."""
  out = np.array(layer_prompts, np.float32)
  out[0] = 0.0
  return out
