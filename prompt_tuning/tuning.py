"""What is tuned: a frozen T5 plus the tuning methods in use (`prompt_tuning.methods`).

The whole parameter tree of a run is

    {"t5": backbone, "prompt": [P, D], "prefix": {...}, "ia3": {...}, ...}   (one subtree per method)

and `optim.partition` splits it into trainable and frozen parts by regex (by
default the methods' subtrees, `methods.trainable_pattern`). Every method turns
its subtree into adapters by site, merged into one pytree that reaches the
backbone as `T5.apply(..., adapters=...)`, never as parameters hidden inside it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from prompt_tuning import combine
from prompt_tuning.methods.base import Method, check_unique
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.t5 import T5, param_logical_axes

PyTree = Any
# The packed rows' features the model reads (seqio's *_positions are not needed: T5 sees only distances).
PACKED_FEATURES = ("encoder_segment_ids", "decoder_segment_ids")


def _float32(x):
  return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x


@dataclasses.dataclass(frozen=True)
class TunedT5:
  """A frozen T5 and the methods tuned for it.

  Attributes:
    config: the backbone's architecture.
    methods: the tuning methods in use (none: the frozen model as it is, or model tuning).
    prompt_combination: where input-side vectors join the embedded input (`combine.MODES`).
  """

  config: T5Config
  methods: tuple[Method, ...] = ()
  prompt_combination: str = combine.DEFAULT_MODE

  def __post_init__(self):
    object.__setattr__(self, "methods", tuple(self.methods))
    check_unique(self.methods)
    combine.check_mode(self.prompt_combination)

  @property
  def module(self) -> T5:
    return T5(self.config)

  @property
  def prompt_length(self) -> int:
    """Positions the methods add to the input (soft prompt or per-layer prompt)."""
    return sum(m.input_length for m in self.methods)

  @property
  def task_count(self) -> int:
    """The tasks the multi-task methods tell apart (0: none is multi-task, and batches carry no task ids)."""
    return max((m.task_count for m in self.methods), default=0)

  def method(self, name: str) -> Method | None:
    return next((m for m in self.methods if m.name == name), None)

  def init_vectors(self, rng: jax.Array, backbone: PyTree) -> PyTree:
    """Fresh parameters of every method: {method.name: ...}, float32 whatever the backbone's dtype (a prompt
    initialized from a bfloat16 embedding is trained, and its optimizer state kept, in float32)."""
    rngs = jax.random.split(rng, max(len(self.methods), 1))
    vectors = {m.name: m.init(r, backbone, self.config) for m, r in zip(self.methods, rngs)}
    return jax.tree.map(_float32, vectors)

  def logical_axes(self, vectors_shapes: PyTree) -> PyTree:
    """Logical axis names of the whole tree {"t5", method names...}."""
    axes = {"t5": param_logical_axes(self.config)}
    for m in self.methods:
      if m.name in vectors_shapes:
        axes[m.name] = m.logical_axes(vectors_shapes[m.name])
    return axes

  @property
  def reads_inputs(self) -> bool:
    """Whether a method's vectors depend on each row's input (`Method.reads_inputs`): adapters per batch."""
    return any(m.reads_inputs for m in self.methods)

  def adapters(
    self, params: PyTree, task_ids: jax.Array | None = None, encoder_input_tokens: jax.Array | None = None
  ) -> sites.Adapters:
    """The merged adapters pytree of every method present in `params` (trained or folded); `task_ids` (int [B],
    each row's task) goes to every method (`Method.adapters`), and `encoder_input_tokens` (int [B, T]) with the
    frozen token embedding to the methods that read the input (`Method.reads_inputs`)."""
    trees = []
    for m in self.methods:
      if m.name not in params:
        continue
      if m.reads_inputs and encoder_input_tokens is not None:
        inputs = (params["t5"]["token_embedder"]["embedding"], jnp.asarray(encoder_input_tokens))
        trees.append(m.adapters(params[m.name], self.config, task_ids, inputs=inputs))
      else:
        trees.append(m.adapters(params[m.name], self.config, task_ids))
    return sites.merge(*trees)

  def check_backbone(self, fingerprint: Callable[[], str], path: str | None) -> None:
    """Every method's `Method.check_backbone`: frozen vectors a method reads were trained on this backbone
    (`fingerprint()` computes its fingerprint, once; `path`: INITIAL_CHECKPOINT_PATH, to name it)."""
    fingerprint = functools.cache(fingerprint)
    for m in self.methods:
      m.check_backbone(self.config, fingerprint, path)

  def fold(self, params: PyTree) -> PyTree:
    """Every method's serving form (prefix MLPs folded away); other entries unchanged."""
    return {k: (self.method(k).fold(v, self.config) if self.method(k) else v) for k, v in params.items()}

  def forward(self, params: PyTree, batch: dict[str, jax.Array], enable_dropout: bool, rng: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, T, vocab] for a seqio-converted batch, packed (with seqio's segment ids; see
    `prompt_tuning.inputs`) or not; its "task_ids" (int [B]; packed: [B, S], one per segment), when it has them,
    reach the methods."""
    rngs = {"dropout": rng} if enable_dropout else {}
    encoder_tokens = None if self.config.decoder_only else batch["encoder_input_tokens"]
    kwargs = {name: batch[name] for name in PACKED_FEATURES if name in batch}
    if self.reads_inputs and kwargs:
      raise ValueError(
        f"{[m.name for m in self.methods if m.reads_inputs]} compute each example's vectors from its whole input, "
        "and a packed row holds several examples: set PACK = False."
      )
    if self.config.decoder_only and "decoder_causal_attention" in batch:
      kwargs["decoder_causal_attention"] = batch["decoder_causal_attention"]
    return self.module.apply(
      {"params": params["t5"]},
      encoder_tokens,
      batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
      adapters=self.adapters(params, batch.get("task_ids"), encoder_tokens),
      enable_dropout=enable_dropout,
      prompt_combination=self.prompt_combination,
      rngs=rngs,
      **kwargs,
    )

  def check_lengths(self, task_feature_lengths: Mapping[str, int], max_encoder_length: int | None) -> None:
    """Refuses a prompt + input longer than the encoder is meant to see (a decoder-only model has no encoder).

    Args:
      task_feature_lengths: the task's {"inputs": ..., "targets": ...} (TASK_FEATURE_LENGTHS).
      max_encoder_length: MAX_ENCODER_LENGTH; None: no limit.

    Raises:
      ValueError: saying which knob to turn.
    """
    if max_encoder_length is None or not self.config.encoder_depth:
      return
    input_length = task_feature_lengths["inputs"]
    total = self.prompt_length + input_length
    if total > max_encoder_length:
      raise ValueError(
        f"prompt length {self.prompt_length} + input {input_length} exceeds max {max_encoder_length}: lower "
        "PROMPT_LENGTH or TASK_FEATURE_LENGTHS['inputs'] (or raise MAX_ENCODER_LENGTH)."
      )
