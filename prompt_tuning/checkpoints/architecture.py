"""What a checkpoint's shapes say about the model, and whether a config agrees.

A T5X checkpoint carries no config. Its shapes fix the vocabulary, widths, head
count, layer counts, gated vs. plain MLP, tied vs. separate logits and the
number of relative-position buckets; they cannot tell the maximum relative
distance, the layer-norm epsilon, the dropout rate or which activation a gated
MLP uses, so those take T5 defaults (with a warning).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from prompt_tuning.checkpoints.errors import CheckpointError, format_list
from prompt_tuning.models.configs import CONFIGS, T5Config, get_config

logger = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int, ...]]

# What shapes can tell, in the order messages list them.
_SHAPE_FACTS = (
  "vocab_size",
  "emb_dim",
  "num_heads",
  "head_dim",
  "mlp_dim",
  "num_encoder_layers",
  "num_decoder_layers",
  "gated_mlp",
  "logits_via_embedding",
  "relative_attention_num_buckets",
  "decoder_only",
)

_NOT_INFERABLE = "relative_attention_max_distance (128), layer_norm_epsilon (1e-6), dropout_rate ({dropout})"


def _layer_count(shapes: Shapes, stack: str) -> int:
  indices = [int(m.group(1)) for path in shapes if (m := re.match(rf"{stack}/layers_(\d+)/", path))]
  return max(indices) + 1 if indices else 0


def facts_from_shapes(shapes: Shapes) -> dict[str, Any]:
  """The architecture facts the parameter shapes determine (only those whose parameters are present)."""
  facts: dict[str, Any] = {"decoder_only": not any(path.startswith("encoder/") for path in shapes)}
  embedding = shapes.get("token_embedder/embedding")  # [vocab, embed]
  if embedding is not None and len(embedding) == 2:
    facts["vocab_size"], facts["emb_dim"] = embedding
  rel_embedding = shapes.get("decoder/relpos_bias/rel_embedding")  # [heads, buckets]
  if rel_embedding is not None and len(rel_embedding) == 2:
    facts["num_heads"], facts["relative_attention_num_buckets"] = rel_embedding
  query = shapes.get("decoder/layers_0/self_attention/query/kernel")  # [embed, heads * head_dim]
  if query is not None and len(query) == 2 and facts.get("num_heads") and query[1] % facts["num_heads"] == 0:
    facts["head_dim"] = query[1] // facts["num_heads"]
  for name in ("wi", "wi_0"):
    wi = shapes.get(f"decoder/layers_0/mlp/{name}/kernel")  # [embed, mlp]
    if wi is not None and len(wi) == 2:
      facts["mlp_dim"], facts["gated_mlp"] = wi[1], name == "wi_0"
  facts["num_decoder_layers"] = _layer_count(shapes, "decoder")
  if not facts["decoder_only"]:
    facts["num_encoder_layers"] = _layer_count(shapes, "encoder")
  facts["logits_via_embedding"] = "decoder/logits_dense/kernel" not in shapes
  return facts


def facts_from_config(config: T5Config) -> dict[str, Any]:
  """The same facts, as `config` states them."""
  facts = {name: getattr(config, name) for name in _SHAPE_FACTS if hasattr(config, name)}
  facts["gated_mlp"] = len(config.mlp_activations) > 1
  if config.decoder_only:
    del facts["num_encoder_layers"]
  return facts


def _matching_sizes(facts: Mapping[str, Any]) -> list[str]:
  return [name for name, config in CONFIGS.items() if facts_from_config(config) == dict(facts)]


def infer_config(shapes: Shapes, location: str) -> T5Config:
  """Builds the T5Config the shapes describe; T5 defaults for what they cannot tell, with a warning.

  Raises:
    CheckpointError: when a parameter needed to infer the architecture is
      missing or has an unexpected rank.
  """
  facts = facts_from_shapes(shapes)
  needed = {
    "vocab_size": "token_embedder/embedding [vocab, embed]",
    "num_heads": "decoder/relpos_bias/rel_embedding [heads, buckets]",
    "head_dim": "decoder/layers_0/self_attention/query/kernel [embed, heads * head_dim]",
    "mlp_dim": "decoder/layers_0/mlp/wi/kernel or wi_0/kernel [embed, mlp]",
  }
  absent = [param for fact, param in needed.items() if fact not in facts]
  if absent or not facts["num_decoder_layers"]:
    raise CheckpointError(
      f"Cannot infer the T5 architecture of the checkpoint at {location}: these parameters are missing or have "
      f"an unexpected shape:\n{format_list(absent or ['decoder/layers_0/...'])}\n"
      "Pass config= a named size (e.g. 't5_1_1_base') or a T5Config."
    )
  gated = facts.pop("gated_mlp")
  config = T5Config(
    **{name: value for name, value in facts.items() if name != "num_encoder_layers"},
    num_encoder_layers=facts.get("num_encoder_layers", 0),
    mlp_activations=("gelu", "linear") if gated else ("relu",),
  )
  sizes = _matching_sizes({**facts, "gated_mlp": gated})
  activation = "the gated MLP's activation (assumed GELU)" if gated else "the MLP activation (assumed ReLU)"
  logger.warning(
    "Inferred the T5 architecture of %s from its shapes (%s). Shapes cannot tell %s or %s, so T5 defaults are used; "
    "pass config= a named size%s or a T5Config to set them.",
    location,
    ", ".join(f"{name}={value}" for name, value in sorted(facts.items())),
    _NOT_INFERABLE.format(dropout=config.dropout_rate),
    activation,
    f" (matching: {', '.join(sizes)})" if sizes else "",
  )
  return config


def check_config(config: T5Config, shapes: Shapes, config_source: str, location: str) -> None:
  """Checks that `config` describes a model with the checkpoint's shapes.

  Only facts whose parameters are present are compared; what is missing is
  reported later, parameter by parameter, by `param_tree.validate`.

  Raises:
    CheckpointError: naming each fact that differs (config vs. checkpoint) and
      the named sizes that would match.
  """
  found = facts_from_shapes(shapes)
  stated = facts_from_config(config)
  differences = [
    f"{name}: {stated[name]} in {config_source}, {found[name]} in the checkpoint"
    for name in _SHAPE_FACTS
    if name in found and name in stated and found[name] != stated[name]
  ]
  if not differences:
    return
  sizes = _matching_sizes(found)
  hint = " or ".join(f"config={size!r}" for size in sizes) if sizes else "a config with the checkpoint's values"
  raise CheckpointError(
    f"{config_source[0].upper()}{config_source[1:]} does not match the checkpoint at {location}:\n"
    f"{format_list(differences)}\nPass {hint}, or config=None to infer the architecture from the shapes."
  )


def resolve_config(config: str | T5Config | None) -> tuple[T5Config | None, str]:
  """Turns the user's `config=` argument into a T5Config (or None) and a name for messages.

  Raises:
    CheckpointError: for an unknown named size or an argument of another type.
  """
  if config is None:
    return None, ""
  if isinstance(config, str):
    try:
      return get_config(config), f"the named size {config!r}"
    except ValueError as e:
      raise CheckpointError(str(e)) from e
  if isinstance(config, T5Config):
    return config, "the T5Config passed as config="
  raise CheckpointError(f"config must be None, a named size (str) or a T5Config, got {type(config).__name__}.")
