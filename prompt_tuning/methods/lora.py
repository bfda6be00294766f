"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", section 4): trained low-rank deltas
of the frozen attention's query and value projections,

    q = x W_q + (alpha / r) (x A_q) B_q        v = x W_v + (alpha / r) (x A_v) B_v

with A [D, r] drawn at random and B [r, H*Dh] starting at zero, so step 0 is the frozen model. By default every
attention has them (encoder self-attention, decoder self- and cross-attention), PEFT's default for T5 (its
`target_modules` ["q", "v"]). The trainable tree has the layout of the attention sites it feeds
(`prompt_tuning.models.adapters`):

    {"encoder": {"self_attention": {"query_a": [L, D, r], "query_b": [L, r, H*Dh], "value_a": ..., "value_b": ...}},
     "decoder": {"self_attention": {...}, "cross_attention": {...}}}

The serving form (`fold`) keeps the factors, so LoRA rows share a batch with other rows as they are, with the
scaling folded into B, named as the sites' leaves (`lora_query_a`, `lora_query_b`, `lora_value_a`, `lora_value_b`):
it is the adapters tree itself. `export` writes it as `lora.safetensors` (and one `.npy` per leaf); `export_peft`
and `load_peft` write and read PEFT's LoRA adapter folder for the Hugging Face T5 (modules `q` and `v`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.checkpoints import hf_names
from prompt_tuning.methods.base import Limits, Method, PromptError, PyTree, read_tree
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.configs import T5Config

# A target is "<stack> <attention>"; the T5X module that holds its projections (the HF names follow from it).
TARGETS = ("encoder self_attention", "decoder self_attention", "decoder cross_attention")
_MODULES = {
  "encoder self_attention": "attention",
  "decoder self_attention": "self_attention",
  "decoder cross_attention": "encoder_decoder_attention",
}
PROJECTIONS = ("query", "value")
INITS = ("kaiming_uniform", "gaussian")

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_HF_PROJECTIONS = {"query": "q", "value": "v"}


def _trained_leaf(projection: str, factor: str) -> str:
  return f"{projection}_{factor}"


def _site_leaf(projection: str, factor: str) -> str:
  return f"lora_{projection}_{factor}"


def _layers(stack: str, config: T5Config) -> int:
  return config.depth(stack)


def model_targets(config: T5Config) -> tuple[str, ...]:
  """The attentions the model has (`TARGETS`' names): decoder self-attention only when decoder-only."""
  return tuple(f"{stack} {attention}" for stack in config.stacks for attention in config.attentions(stack))


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class LoRA(Method):
  """Low-rank deltas of the query and value projections at the chosen attentions.

  Attributes:
    rank: r, the inner width of every pair of factors (Hu et al.: 1 to 8 suffice; PEFT's default 8).
    alpha: the deltas are scaled by alpha / r (by alpha / sqrt(r) when `rank_stabilized`); PEFT's default 8.
    targets: the attentions with deltas, any of "encoder self_attention", "decoder self_attention",
      "decoder cross_attention"; None (the default): every attention the model has.
    initializer: A's initializer: "kaiming_uniform" (PEFT's default: U(-1/sqrt(D), 1/sqrt(D))) or "gaussian"
      (N(0, 1/r^2), PEFT's "gaussian"). B always starts at zero.
    rank_stabilized: scale by alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023; PEFT's `use_rslora`).
  """

  rank: int = 8
  alpha: float = 8.0
  targets: tuple[str, ...] | None = None
  initializer: str = "kaiming_uniform"
  rank_stabilized: bool = False
  name = "lora"
  # The attention sites' leaves it feeds (models/adapters.py), for a server that pads rows from the site contract.
  leaves = tuple(
    (site, _site_leaf(projection, factor))
    for site in ("self_attention", "cross_attention")
    for projection in PROJECTIONS
    for factor in ("a", "b")
  )

  def __post_init__(self):
    if self.targets is not None:
      object.__setattr__(self, "targets", tuple(self.targets))  # gin and JSON hand lists over
      unknown = [t for t in self.targets if t not in TARGETS]
      if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
        raise ValueError(f"LoRA.targets={self.targets!r}: give each of {TARGETS} at most once, and at least one.")
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoRA.rank must be a positive integer, got {self.rank!r}.")
    if not self.alpha > 0:
      raise ValueError(f"LoRA.alpha must be > 0 (the deltas are scaled by alpha / rank), got {self.alpha!r}.")
    if self.initializer not in INITS:
      raise ValueError(f"LoRA.initializer={self.initializer!r}; use one of {INITS}.")

  @property
  def scaling(self) -> float:
    """What the deltas are multiplied by: alpha / r (alpha / sqrt(r) when rank-stabilized)."""
    return self.alpha / (math.sqrt(self.rank) if self.rank_stabilized else self.rank)

  def sites(self, config: T5Config) -> tuple[tuple[str, str], ...]:
    """(stack, attention) of every target on this model.

    Raises:
      ValueError: a target the model does not have (a decoder-only model has decoder self-attention only).
    """
    available = model_targets(config)
    targets = available if self.targets is None else self.targets
    missing = [t for t in targets if t not in available]
    if missing:
      raise ValueError(
        f"LoRA.targets {missing} are not attentions of this model (it has {available}); leave LoRA.targets unset "
        "for every attention it has."
      )
    return tuple(tuple(t.split(" ")) for t in targets)

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    del backbone
    joined = config.num_heads * config.head_dim
    targets = self.sites(config)
    keys = jax.random.split(rng, len(targets) * len(PROJECTIONS))
    tree: dict[str, Any] = {}
    for i, (stack, attention) in enumerate(targets):
      layers = _layers(stack, config)
      node = tree.setdefault(stack, {}).setdefault(attention, {})
      for j, projection in enumerate(PROJECTIONS):
        node[_trained_leaf(projection, "a")] = self._init_a(keys[i * len(PROJECTIONS) + j], layers, config.emb_dim)
        node[_trained_leaf(projection, "b")] = jnp.zeros((layers, self.rank, joined), jnp.float32)  # step 0: frozen
    return tree

  def _init_a(self, key: jax.Array, layers: int, width: int) -> jax.Array:
    shape = (layers, width, self.rank)  # [L, D, r]
    if self.initializer == "gaussian":
      return jax.random.normal(key, shape, jnp.float32) / self.rank
    # PEFT's kaiming_uniform_(a=sqrt(5)) over lora_A [r, D]: bound sqrt(6 / ((1 + 5) D)) = 1 / sqrt(D).
    bound = 1.0 / math.sqrt(width)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

  def fold(self, params: PyTree, config: T5Config) -> PyTree:
    """The factors named as the sites' leaves, B times the scaling; a folded tree is returned as it is."""
    del config
    if is_folded(params):
      return params
    folded: dict[str, Any] = {}
    for stack, attentions in params.items():
      for attention, leaves in attentions.items():
        node = folded.setdefault(stack, {}).setdefault(attention, {})
        for projection in PROJECTIONS:
          node[_site_leaf(projection, "a")] = leaves[_trained_leaf(projection, "a")]
          node[_site_leaf(projection, "b")] = leaves[_trained_leaf(projection, "b")] * self.scaling
    return folded

  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None) -> sites.Adapters:
    """The folded tree (it is the adapters tree), checked against the backbone; one LoRA for every task."""
    del task_ids
    folded = self.fold(params, config)
    self.check_factors(folded, config)
    return folded

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    """Reads `lora.safetensors` (what `export` wrote: the folded tree), checked against the backbone."""
    tree = read_tree(self.name, folder)
    self.check_factors(tree, config)
    return tree

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    """An upload's factors: the site contract's checks (names, shapes, one rank within the server's width), then
    LoRA's own (both factors of each projection of an attention, finite values).

    Raises:
      PromptError: saying which array is wrong and what was expected.
    """
    super().check(arrays, limits)
    try:
      cls.check_factors(arrays, limits.config)
    except ValueError as e:
      raise PromptError(str(e)) from None

  @classmethod
  def check_factors(cls, arrays: Mapping[str, Any], config: T5Config) -> None:
    """Says what is wrong with folded LoRA factors a user hands in (a file, an upload), and with the factors
    `adapters` hands the model.

    `arrays` is the folded tree, or the same flat with "/"-joined names ("encoder/self_attention/lora_query_a").
    Any subset of the model's attentions may be given; each gives both factors of the query and the value, of
    any rank (the folded factors need no setting to be read).

    Raises:
      ValueError: unknown sites or names, a missing factor, a shape that does not fit the backbone (layers,
        embedding width, heads x head_dim) or factors of different ranks, or values that are not finite.
    """
    tree = _nested(arrays)
    available = {tuple(t.split(" ")) for t in model_targets(config)}
    given = {(stack, attention) for stack, node in tree.items() for attention in node}
    if not given or given - available:
      raise ValueError(
        f"LoRA factors for {sorted('/'.join(s) for s in given - available) or 'no attention'}; this model takes "
        f"any of {sorted('/'.join(s) for s in available)}, each with "
        f"{[_site_leaf(p, f) for p in PROJECTIONS for f in 'ab']}."
      )
    joined = config.num_heads * config.head_dim
    for stack, attention in sorted(given):
      leaves, where = tree[stack][attention], f"{stack}/{attention}"
      expected = {_site_leaf(p, f) for p in PROJECTIONS for f in "ab"}
      if set(leaves) != expected:
        raise ValueError(
          f"LoRA at {where} has {sorted(leaves)}; expected exactly {sorted(expected)} (a trained tree is folded "
          "first: LoRA.fold)."
        )
      layers = _layers(stack, config)
      for projection in PROJECTIONS:
        a, b = leaves[_site_leaf(projection, "a")], leaves[_site_leaf(projection, "b")]
        a_shape, b_shape = tuple(np.shape(a)), tuple(np.shape(b))
        rank = a_shape[-1] if a_shape else 0
        if a_shape != (layers, config.emb_dim, rank) or b_shape != (layers, rank, joined) or rank < 1:
          raise ValueError(
            f"LoRA {where}/{_site_leaf(projection, 'a')} and {_site_leaf(projection, 'b')} have shapes {a_shape} "
            f"and {b_shape}; this backbone needs [{layers}, {config.emb_dim}, r] and [{layers}, r, {joined}] "
            "(layers, embedding width, rank; rank, heads x head_dim) with one rank r >= 1."
          )
        for name, x in ((_site_leaf(projection, "a"), a), (_site_leaf(projection, "b"), b)):
          if isinstance(x, np.ndarray) and not np.isfinite(x).all():  # host arrays: an upload, a file
            raise ValueError(f"LoRA {where}/{name} holds NaN or infinite values; export the factors again.")

  def export_peft(
    self, params: PyTree, config: T5Config, folder: str | Path, *, base_model_name_or_path: str | None = None
  ) -> Path:
    """Writes PEFT's LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`) for the Hugging Face
    T5 of this backbone: `PeftModel.from_pretrained(hf_t5, folder)` gives our logits.

    Args:
      params: the trained tree (or the folded one: B is then divided by the scaling again).
      config: the backbone's architecture (an encoder-decoder T5: Hugging Face's T5 has no decoder-only form).
      folder: the folder to write (created).
      base_model_name_or_path: the Hugging Face model it was trained for, recorded in the config.

    Returns:
      The folder.
    """
    if "encoder" not in config.stacks:
      raise ValueError(
        "PEFT's LoRA format is written for Hugging Face's encoder-decoder T5; this model is decoder-only."
      )
    folded = jax.device_get(self.fold(params, config))
    self.check_factors(folded, config)
    tensors = {}
    for stack, attentions in folded.items():
      for attention, leaves in attentions.items():
        for projection in PROJECTIONS:
          a = np.asarray(leaves[_site_leaf(projection, "a")], np.float32)  # [L, D, r]
          b = np.asarray(leaves[_site_leaf(projection, "b")], np.float32) / self.scaling  # [L, r, H*Dh]
          for layer in range(a.shape[0]):
            module = _peft_module(stack, attention, projection, layer)
            tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(a[layer].T)  # PyTorch [out, in]: [r, D]
            tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(b[layer].T)  # [H*Dh, r]
    targets = _targets_of(folded)
    adapter_config = {
      "peft_type": "LORA",
      "task_type": "SEQ_2_SEQ_LM",
      "r": self.rank,
      "lora_alpha": self.alpha,
      "use_rslora": self.rank_stabilized,
      # Every attention: PEFT's T5 default; fewer: a regex over the module names (PEFT full-matches a string).
      "target_modules": ["q", "v"] if set(targets) == set(TARGETS) else _target_regex(targets),
      "lora_dropout": 0.0,
      "bias": "none",
      "fan_in_fan_out": False,
      "init_lora_weights": True,
      "use_dora": False,
      "rank_pattern": {},
      "alpha_pattern": {},
      "layers_to_transform": None,
      "modules_to_save": None,
      "base_model_name_or_path": base_model_name_or_path,
      "inference_mode": True,
    }
    from prompt_tuning.checkpoints.peft import write_adapter_folder

    return write_adapter_folder(folder, adapter_config, tensors)

  def load_peft(self, folder: str | Path, config: T5Config) -> PyTree:
    """Reads a PEFT LoRA adapter folder as our folded tree, after checking it was made with these settings
    (`read_peft` reads any such folder with its own settings).

    Raises:
      ValueError: settings that differ from this method's (rank, alpha, targets), or what `read_peft` refuses.
    """
    settings, tree = read_peft(folder, config)
    mine_targets = {" ".join(s) for s in self.sites(config)}
    targets = tuple(t for t in TARGETS if t in mine_targets)
    mine = dataclasses.replace(self, targets=targets, initializer=settings.initializer)
    if settings != mine:
      raise ValueError(
        f"the PEFT adapter {folder} has rank {settings.rank}, alpha {settings.alpha}, rank_stabilized "
        f"{settings.rank_stabilized}, targets {settings.targets}; this run's LoRA has rank {mine.rank}, alpha "
        f"{mine.alpha}, rank_stabilized {mine.rank_stabilized}, targets {mine.targets}: set LoRA's settings to the "
        "adapter's (e.g. --gin.LoRA.rank=4), or use prompt_tuning.methods.lora.read_peft."
      )
    return tree


def is_folded(params: PyTree) -> bool:
  """True for the serving form (leaves named `lora_*`), False for a trained tree."""
  leaves = [name for attentions in params.values() for leaves in attentions.values() for name in leaves]
  return bool(leaves) and all(name.startswith("lora_") for name in leaves)


def _nested(arrays: Mapping[str, Any]) -> dict[str, Any]:
  """A folded tree from itself or from its flat "/"-joined form; refuses other layouts."""
  tree: dict[str, Any] = {}
  for key, value in arrays.items():
    if isinstance(value, Mapping):
      for sub, leaves in value.items():
        if not isinstance(leaves, Mapping):
          raise ValueError(f"LoRA factors are given as <stack>/<attention>/<name>; got {key}/{sub} as an array.")
        tree.setdefault(key, {}).setdefault(sub, {}).update(leaves)
      continue
    parts = str(key).split("/")
    if len(parts) != 3:
      raise ValueError(
        f"LoRA array {key!r}: name the factors <stack>/<attention>/<name>, e.g. 'encoder/self_attention/lora_query_a'."
      )
    tree.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = value
  return tree


def _peft_module(stack: str, attention: str, projection: str, layer: int) -> str:
  """PEFT's module name: base_model.model.encoder.block.0.layer.0.SelfAttention.q (ours, via hf_names)."""
  ours = f"{stack}/layers_{layer}/{_MODULES[f'{stack} {attention}']}/{projection}/kernel"
  hf, _ = hf_names.hf_name(ours)
  return _PEFT_PREFIX + hf.removesuffix(".weight")


def _target_regex(targets: tuple[str, ...]) -> str:
  modules = {
    "encoder self_attention": r"encoder\.block\.\d+\.layer\.0\.SelfAttention",
    "decoder self_attention": r"decoder\.block\.\d+\.layer\.0\.SelfAttention",
    "decoder cross_attention": r"decoder\.block\.\d+\.layer\.1\.EncDecAttention",
  }
  return "(" + "|".join(modules[t] for t in targets) + r")\.(q|v)"


def _peft_site(module: str) -> tuple[str, str, str, int] | None:
  """(stack, attention, projection, layer) of a PEFT module name, None for anything but a T5 q or v."""
  found = hf_names.our_path(module.removeprefix(_PEFT_PREFIX) + ".weight")
  if found is None:
    return None
  parts = found[0].split("/")
  if len(parts) != 5:
    return None
  stack, layer, module_name, projection, _ = parts
  target = next((t for t, m in _MODULES.items() if m == module_name and t.startswith(stack)), None)
  if target is None or projection not in PROJECTIONS:
    return None
  return stack, target.split(" ")[1], projection, int(layer.removeprefix("layers_"))


_REFUSED_PEFT = {
  "use_dora": "DoRA rescales the merged weight's columns, which is not a low-rank delta",
  "rank_pattern": "a rank per module",
  "alpha_pattern": "an alpha per module",
  "layers_to_transform": "LoRA on some layers only",
}


def read_peft(folder: str | Path, config: T5Config) -> tuple[LoRA, PyTree]:
  """Reads a PEFT LoRA adapter folder for a Hugging Face T5: its settings as a `LoRA`, and our folded tree.

  Raises:
    FileNotFoundError: no adapter_config.json or adapter_model.safetensors in `folder`.
    ValueError: another PEFT adapter type, settings we cannot represent (DoRA, per-module ranks, biases),
      LoRA on modules other than q and v, or factors that do not fit the backbone.
  """
  folder = Path(folder)
  config_path, weights_path = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
  for path in (config_path, weights_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: {folder} is not a PEFT LoRA adapter folder (saved with safetensors).")
  adapter = json.loads(config_path.read_text())
  if str(adapter.get("peft_type", "")).upper() != "LORA":
    raise ValueError(f"{folder} is a PEFT {adapter.get('peft_type')!r} adapter, not LORA; read it with its method.")
  for key, why in _REFUSED_PEFT.items():
    if adapter.get(key):
      raise ValueError(f"{config_path}: {key}={adapter[key]!r} ({why}) has no LoRA form here; train it without.")
  if adapter.get("bias", "none") != "none" or adapter.get("lora_bias") or adapter.get("fan_in_fan_out"):
    raise ValueError(f"{config_path}: LoRA biases and fan_in_fan_out are not read here; export it with bias 'none'.")
  from safetensors.numpy import load_file

  rank, alpha = int(adapter["r"]), float(adapter["lora_alpha"])
  settings = LoRA(rank=rank, alpha=alpha, rank_stabilized=bool(adapter.get("use_rslora")))
  factors: dict[tuple[str, str, str], dict[int, dict[str, np.ndarray]]] = {}
  for name, array in load_file(str(weights_path)).items():
    module, _, factor = name.rpartition(".lora_")
    site = _peft_site(module) if factor in ("A.weight", "B.weight") else None
    if site is None:
      raise ValueError(
        f"{weights_path} holds {name!r}; only LoRA factors of a T5's q and v projections are read here "
        "(base_model.model.<stack>.block.<i>.layer.<j>.<attention>.{q,v}.lora_{A,B}.weight)."
      )
    stack, attention, projection, layer = site
    factors.setdefault((stack, attention, projection), {}).setdefault(layer, {})[factor[0]] = array
  tree: dict[str, Any] = {}
  for (stack, attention, projection), layers in factors.items():
    if sorted(layers) != list(range(_layers(stack, config))) or any(len(f) != 2 for f in layers.values()):
      raise ValueError(
        f"{weights_path}: LoRA on {stack} {attention} {projection} covers layers {sorted(layers)} (or lacks a "
        f"factor); the backbone has {_layers(stack, config)}, each needing lora_A and lora_B."
      )
    a = np.stack([layers[i]["A"].T for i in sorted(layers)]).astype(np.float32)  # [L, D, r]
    b = np.stack([layers[i]["B"].T for i in sorted(layers)]).astype(np.float32)  # [L, r, H*Dh]
    tree.setdefault(stack, {}).setdefault(attention, {}).update(
      {_site_leaf(projection, "a"): a, _site_leaf(projection, "b"): b * settings.scaling}
    )
  for stack, attentions in tree.items():
    for attention, leaves in attentions.items():
      if len(leaves) != 2 * len(PROJECTIONS):
        raise ValueError(
          f"{weights_path}: LoRA on {stack} {attention} has {sorted(leaves)}; both q and v are needed here "
          "(PEFT's T5 default target_modules ['q', 'v'])."
        )
  settings.check_factors(tree, config)
  ranks = {
    x.shape[-1]
    for attentions in tree.values()
    for leaves in attentions.values()
    for n, x in leaves.items()
    if n[-1] == "a"
  }
  if ranks != {rank}:
    raise ValueError(f"{weights_path} holds factors of ranks {sorted(ranks)}; its config says r={rank}.")
  return dataclasses.replace(settings, targets=_targets_of(tree)), tree


def _targets_of(tree: PyTree) -> tuple[str, ...]:
  """The targets a (trained or folded) tree has factors for, in `TARGETS` order."""
  given = {f"{stack} {attention}" for stack, attentions in tree.items() for attention in attentions}
  return tuple(t for t in TARGETS if t in given)
