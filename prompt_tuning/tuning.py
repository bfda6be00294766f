"""What is tuned: a frozen T5 plus (optionally) a soft prompt and/or per-layer prefixes.

The whole parameter tree of a run is

    {"t5": backbone, "prompt": [P, D] (prompt tuning), "prefix": {...} (prefix tuning)}

and `optim.partition` splits it into trainable and frozen parts by regex. The
vectors reach the backbone as arguments (`T5.apply(..., prompt=, prefix=)`),
never as parameters hidden inside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.t5 import T5, param_logical_axes

PyTree = Any
# (rng, embedding table [V, D], length P) -> prompt [P, D]
PromptInitializer = Callable[[jax.Array, jax.Array, int], jax.Array]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TunedT5:
  """A frozen T5 and the vectors tuned for it.

  Attributes:
    config: the backbone's architecture.
    prompt_length: soft prompt positions P (0: no prompt).
    prompt_init: initializer of the prompt (see `prompt_tuning.prompts`).
    prefix: prefix-tuning settings (`prompt_tuning.prefixes.PrefixSettings`) or None.
  """

  config: T5Config
  prompt_length: int = 0
  prompt_init: PromptInitializer | None = None
  prefix: Any = None

  def __post_init__(self):
    if self.prompt_length < 0:
      raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}.")
    if self.prompt_length and self.prompt_init is None:
      raise ValueError("prompt_length > 0 needs a prompt_init (e.g. prompt_tuning.prompts.sampled_vocab()).")

  @property
  def module(self) -> T5:
    return T5(self.config)

  def init_vectors(self, rng: jax.Array, backbone: PyTree) -> PyTree:
    """Fresh prompt/prefix parameters: {"prompt": [P, D]} and/or {"prefix": ...}."""
    vectors = {}
    prompt_rng, prefix_rng = jax.random.split(rng)
    if self.prompt_length:
      embedding = backbone["token_embedder"]["embedding"]
      prompt = self.prompt_init(prompt_rng, embedding, self.prompt_length)
      expected = (self.prompt_length, self.config.emb_dim)
      if prompt.shape != expected:
        raise ValueError(
          f"the prompt initializer gave shape {prompt.shape}; this run needs {expected} "
          "(PROMPT_LENGTH, the backbone's embedding width). Check PROMPT_LENGTH or the prompt file."
        )
      vectors["prompt"] = prompt.astype(jnp.float32)
    if self.prefix is not None:
      from prompt_tuning import prefixes

      vectors["prefix"] = prefixes.init_prefix(prefix_rng, self.prefix, self.config)
    return vectors

  def logical_axes(self, vectors_shapes: PyTree) -> PyTree:
    """Logical axis names of the whole tree {"t5", "prompt", "prefix"} (prompt axes replicated by default)."""
    axes = {"t5": param_logical_axes(self.config)}
    if "prompt" in vectors_shapes:
      axes["prompt"] = PartitionSpec("prompt", "prompt_embed")
    if "prefix" in vectors_shapes:
      axes["prefix"] = jax.tree.map(lambda x: PartitionSpec(*([None] * x.ndim)), vectors_shapes["prefix"])
    return axes

  def model_inputs(self, params: PyTree) -> dict[str, Any]:
    """The prompt and prefix arguments of T5.apply from the whole tree."""
    inputs = {"prompt": params.get("prompt"), "prefix": None}
    if "prefix" in params:
      from prompt_tuning import prefixes

      inputs["prefix"] = prefixes.materialize(params["prefix"], self.prefix, self.config)
    return inputs

  def forward(self, params: PyTree, batch: dict[str, jax.Array], enable_dropout: bool, rng: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, T, vocab] for a seqio-converted batch."""
    rngs = {"dropout": rng} if enable_dropout else {}
    encoder_tokens = None if self.config.decoder_only else batch["encoder_input_tokens"]
    kwargs = self.model_inputs(params)
    if self.config.decoder_only and "decoder_causal_attention" in batch:
      kwargs["decoder_causal_attention"] = batch["decoder_causal_attention"]
    return self.module.apply(
      {"params": params["t5"]},
      encoder_tokens,
      batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
      enable_dropout=enable_dropout,
      rngs=rngs,
      **kwargs,
    )

  def check_lengths(self, input_length: int, max_encoder_length: int | None) -> None:
    """Refuses a prompt + input longer than the encoder is meant to see.

    Raises:
      ValueError: saying which knob to turn.
    """
    if max_encoder_length is None:
      return
    total = self.prompt_length + input_length
    if total > max_encoder_length:
      raise ValueError(
        f"prompt length {self.prompt_length} + input {input_length} exceeds max {max_encoder_length}: lower "
        "PROMPT_LENGTH or TASK_FEATURE_LENGTHS['inputs'] (or raise MAX_ENCODER_LENGTH)."
      )
