"""Hugging Face T5 parameter names <-> ours, in both directions.

Hugging Face (PyTorch layout) stores linear weights as [out, in] and the
relative-position table as [buckets, heads]; we store kernels as [in, out] and
the table as [heads, buckets], so those entries are transposed on the way.
Hugging Face's Flax layout (`flax_model.msgpack`) is first renamed to the
PyTorch names by `torch_name_from_flax`.
"""

from __future__ import annotations

import re

# Entries every Hugging Face T5 may carry that hold nothing of their own: copies
# of `shared.weight` (tied), and a cross-attention position table T5 never uses.
IGNORED = frozenset(
  {
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
  }
)

LM_HEAD = "lm_head.weight"
SHARED = "shared.weight"

_PROJECTIONS = {"q": "query", "k": "key", "v": "value", "o": "out"}
_PROJECTIONS_BACK = {ours: hf for hf, ours in _PROJECTIONS.items()}

# (Hugging Face name, our path, transposed). `{i}` is a layer index, `{p}` an
# attention projection (q/k/v/o <-> query/key/value/out), `{m}` an MLP kernel.
_RULES = (
  (SHARED, "token_embedder/embedding", False),
  ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder/relpos_bias/rel_embedding", True),
  ("encoder.block.{i}.layer.0.SelfAttention.{p}.weight", "encoder/layers_{i}/attention/{p}/kernel", True),
  ("encoder.block.{i}.layer.0.layer_norm.weight", "encoder/layers_{i}/pre_attention_layer_norm/scale", False),
  ("encoder.block.{i}.layer.1.DenseReluDense.{m}.weight", "encoder/layers_{i}/mlp/{m}/kernel", True),
  ("encoder.block.{i}.layer.1.layer_norm.weight", "encoder/layers_{i}/pre_mlp_layer_norm/scale", False),
  ("encoder.final_layer_norm.weight", "encoder/encoder_norm/scale", False),
  ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "decoder/relpos_bias/rel_embedding", True),
  ("decoder.block.{i}.layer.0.SelfAttention.{p}.weight", "decoder/layers_{i}/self_attention/{p}/kernel", True),
  ("decoder.block.{i}.layer.0.layer_norm.weight", "decoder/layers_{i}/pre_self_attention_layer_norm/scale", False),
  (
    "decoder.block.{i}.layer.1.EncDecAttention.{p}.weight",
    "decoder/layers_{i}/encoder_decoder_attention/{p}/kernel",
    True,
  ),
  ("decoder.block.{i}.layer.1.layer_norm.weight", "decoder/layers_{i}/pre_cross_attention_layer_norm/scale", False),
  ("decoder.block.{i}.layer.2.DenseReluDense.{m}.weight", "decoder/layers_{i}/mlp/{m}/kernel", True),
  ("decoder.block.{i}.layer.2.layer_norm.weight", "decoder/layers_{i}/pre_mlp_layer_norm/scale", False),
  ("decoder.final_layer_norm.weight", "decoder/decoder_norm/scale", False),
  (LM_HEAD, "decoder/logits_dense/kernel", True),
)

_HF_GROUPS = {"i": r"\d+", "p": "|".join(_PROJECTIONS), "m": "wi|wi_0|wi_1|wo"}
_OUR_GROUPS = {"i": r"\d+", "p": "|".join(_PROJECTIONS.values()), "m": "wi|wi_0|wi_1|wo"}


def _compile(template: str, groups: dict[str, str]) -> re.Pattern:
  parts = re.split(r"\{(\w)\}", template)  # Literal text at even positions, group names at odd ones.
  pattern = "".join(re.escape(part) if n % 2 == 0 else f"(?P<{part}>{groups[part]})" for n, part in enumerate(parts))
  return re.compile(f"^{pattern}$")


_COMPILED = tuple(
  (_compile(hf, _HF_GROUPS), _compile(ours, _OUR_GROUPS), hf, ours, transposed) for hf, ours, transposed in _RULES
)


def our_path(hf_name: str) -> tuple[str, bool] | None:
  """Our path for a Hugging Face name, and whether the array is transposed on the way; None if unknown."""
  for hf_pattern, _, _, ours, transposed in _COMPILED:
    if match := hf_pattern.match(hf_name):
      values = dict(match.groupdict())
      if "p" in values:
        values["p"] = _PROJECTIONS[values["p"]]
      return ours.format(**values), transposed
  return None


def hf_name(path: str) -> tuple[str, bool] | None:
  """The Hugging Face name for our path, and whether the array is transposed on the way; None if unknown."""
  for _, our_pattern, hf, _, transposed in _COMPILED:
    if match := our_pattern.match(path):
      values = dict(match.groupdict())
      if "p" in values:
        values["p"] = _PROJECTIONS_BACK[values["p"]]
      return hf.format(**values), transposed
  return None


def hf_name_or_path(path: str) -> str:
  """The Hugging Face name of our path when there is one (for messages), else the path itself."""
  named = hf_name(path)
  return named[0] if named else path


def torch_name_from_flax(flax_path: str) -> tuple[str, bool]:
  """Hugging Face Flax path (`encoder/block/0/layer/0/SelfAttention/q/kernel`) -> PyTorch name, transposed.

  Flax kernels are [in, out] and become PyTorch [out, in] weights; embeddings
  (`shared/embedding`, `relative_attention_bias/embedding`) keep their layout.
  """
  *parents, leaf = flax_path.split("/")
  if leaf == "kernel":
    return ".".join([*parents, "weight"]), True
  if leaf in ("embedding", "scale"):
    return ".".join([*parents, "weight"]), False
  return ".".join([*parents, leaf]), False
