"""ATTEMPT (Asai et al., 2022, "ATTEMPT: Parameter-Efficient Multi-task Tuning via Attentional Mixtures of Soft
Prompts", section 3): each example's prompt is a trainable target prompt plus an attention-weighted mixture of frozen
source prompts (prompts tuned before on other tasks) and the target prompt itself.

Section 3.2 ("input-prompt attentions"), as built here for an input x with embedded tokens X [T, D]:

    x^ = maxpool(X)                                  [D]     the non-padding tokens' embeddings, max-pooled
    H  = LayerNorm(W_up^T SiLU(W_down^T x^))         [D]     the attention module G (W_down [D, r], W_up [r, D])
    a_j = softmax_j(P^_j . H / T),  j = 1 .. t + 1   [t+1]   P^_j = maxpool(P_j), P_{t+1} = P_target
    P_instance(x) = P_target + sum_{j=1}^{t+1} a_j P_j   [P, D]   (the paper's eq. for the instance prompt)

The sum runs over the t source prompts and the target prompt itself, so the target enters twice (once alone and once
weighted), as in the paper. T is the softmax temperature: D * e, the paper's setting, unless `temperature` is set.
Checked against the authors' code (github.com/AkariAsai/ATTEMPT, its T5 encoder's `attn_method="sub"`, the one its
configs use): the width-100 down/up projection with SiLU between and a LayerNorm after, the target joining the
attended set and added once more, and T = 2087 in every config, 768 * e for T5-base. One difference, ours: their
input max-pool runs over every position, padding included (the embedding of id 0 joins the max); ours over the real
tokens only, so that an example's prompt does not depend on how far its batch is padded.
The source prompts are frozen: they are not in the trained tree (the optimizer never sees them) but held by the
method, read from a prompt library (`prompt_tuning.transfer.source_prompts`: ids of a library folder in the server's
format, or prompt files), each checked against the run's backbone as `prompt-tuning transfer` checks a source
(`check_backbone`: another width or another recorded backbone is refused by name).

Trainable tree: {"target": [P, D], "down": [D, r], "up": [r, D], "norm": {"scale": [D], "bias": [D]}}; the target
from `initializer` (PROMPT_INIT), W_down and W_up LeCun-normal, the layer norm at scale 1 and bias 0. Not built: the
paper's multi-task training, G shared by several target tasks at once; here a run tunes one target task.

Since the prompt depends on each input it cannot fold into one [P, D] prompt: the serving form (`fold`) and the
export (`attempt.safetensors`, npy) hold the trained tree plus the sources [t, P, D] (their names, paths and recorded
backbones in the header), and `load` reads them back, refusing an export whose sources are not the ones this run's
config names. eval and infer compute every row's prompt from its input (`TunedT5.adapters`). The server does not
serve it: its rows carry fixed vectors (the site contract, `prompt_tuning.models.adapters`, has no leaf computed from
the request's input), so an upload is refused with that reason (`check`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning import prompts
from prompt_tuning.methods.base import Limits, Method, PromptError, PyTree, read_tree, write_tree
from prompt_tuning.models.adapters import Adapters
from prompt_tuning.models.configs import T5Config


class SourcesChangedError(RuntimeError):
  """An ATTEMPT export trained with other source prompts than the config names. Not a ValueError: the inference
  build treats those as a damaged export and reads the training checkpoint instead, which would pair the trained
  target and projection with the config's other sources."""


SOURCES = "sources"  # the folded tree's frozen source prompts [t, P, D]
SOURCES_KEY = "attempt_sources"  # the export header's record of them (JSON)


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class ATTEMPT(Method):
  """ATTEMPT (module docstring).

  Attributes:
    length: P, the target prompt's length (PROMPT_LENGTH); every source prompt must have it.
    sources: the frozen source prompts, `prompt_tuning.transfer.SourcePrompts` (gin:
      `@prompt_tuning.transfer.source_prompts()`): `names`, `prompts` [t, P, D], `check(config, fingerprint, path)`
      and `record()` (strings for the export's header).
    initializer: the target prompt's initializer (PROMPT_INIT, e.g. `prompts.sampled_vocab()`).
    projection_dim: r, the attention module's bottleneck width (W_down [D, r]); not fixed by section 3.
    temperature: T of the softmax; None: the paper's D * e.
  """

  length: int
  sources: Any
  initializer: prompts.Initializer | None = None
  projection_dim: int = 100
  temperature: float | None = None
  name = "attempt"
  leaves = (("input", "prompt"),)  # it feeds the input site (per row); a server refuses it (`check`)
  reads_inputs = True

  def __post_init__(self):
    if not isinstance(self.length, int) or self.length < 1:
      raise ValueError(f"ATTEMPT.length must be >= 1, got {self.length!r}; set PROMPT_LENGTH.")
    if self.initializer is None:
      raise ValueError("ATTEMPT's target prompt needs an initializer: set PROMPT_INIT (e.g. sampled_vocab()).")
    if not isinstance(self.projection_dim, int) or self.projection_dim < 1:
      raise ValueError(f"ATTEMPT.projection_dim must be a positive integer, got {self.projection_dim!r}.")
    if self.temperature is not None and not self.temperature > 0:
      raise ValueError(f"ATTEMPT.temperature must be > 0 (or None: the paper's D * e), got {self.temperature!r}.")
    for attribute in ("names", "prompts", "check", "record"):
      if not hasattr(self.sources, attribute):
        raise ValueError(
          f"ATTEMPT.sources is {self.sources!r}; give the source prompts as @prompt_tuning.transfer.source_prompts() "
          "(ATTEMPT_SOURCES: library ids or prompt files)."
        )
    shape = self.source_prompts.shape  # [t, P, D]
    if shape[1] != self.length:
      raise ValueError(
        f"the source prompts {list(self.sources.names)} have {shape[1]} vectors but PROMPT_LENGTH is {self.length}: "
        f"ATTEMPT adds them to the target prompt, so set PROMPT_LENGTH = {shape[1]}."
      )

  @property
  def source_prompts(self) -> np.ndarray:
    """The frozen source prompts, float32 [t, P, D]."""
    return self.sources.prompts

  @property
  def input_length(self) -> int:
    return self.length

  def check_backbone(self, config: T5Config, fingerprint: Callable[[], str], path: str | None) -> None:
    """Refuses source prompts of another width, or recording another backbone, than the run's (transfer's check)."""
    self.sources.check(config, fingerprint(), path)

  def frozen_inputs(self) -> str:
    """The sources' names and the SHA-256 of their values: a run resumes only with the sources it trained with."""
    digest = hashlib.sha256(np.ascontiguousarray(self.source_prompts, np.float32).tobytes()).hexdigest()
    return f"{', '.join(self.sources.names)} {list(self.source_prompts.shape)} sha256:{digest[:16]}"

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    if config.decoder_only:
      raise ValueError(
        "ATTEMPT attends from the max-pooled encoder input (Asai et al. 2022, section 3.2); a decoder-only model has "
        "no encoder input: use an encoder-decoder T5."
      )
    target_key, down_key, up_key = jax.random.split(rng, 3)
    dim, r = config.emb_dim, self.projection_dim
    lecun = jax.nn.initializers.lecun_normal()
    return {
      "target": prompts.init_prompt(target_key, self.initializer, backbone["token_embedder"]["embedding"], self.length),
      "down": lecun(down_key, (dim, r), jnp.float32),
      "up": lecun(up_key, (r, dim), jnp.float32),
      "norm": {"scale": jnp.ones((dim,), jnp.float32), "bias": jnp.zeros((dim,), jnp.float32)},
    }

  def logical_axes(self, shapes: PyTree) -> PyTree:
    # The target is a prompt (replicated, Adafactor unfactored); the small projection stays replicated.
    axes = jax.tree.map(lambda x: PartitionSpec(*([None] * len(x.shape))), shapes)
    axes["target"] = PartitionSpec(*prompts.PROMPT_AXES)
    return axes

  def attention(self, params: PyTree, embedding: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row's instance prompt and attention weights (module docstring).

    Args:
      params: the trained tree (or the folded one, whose sources are used).
      embedding: the frozen backbone's token embedding [V, D].
      tokens: the encoder input tokens int [B, T] (0: padding).

    Returns:
      (prompt [B, P, D], weights [B, t + 1]: the sources' then the target's, each row summing to 1).
    """
    sources = params.get(SOURCES, self.source_prompts)
    prompts_all = jnp.concatenate([jnp.asarray(sources, jnp.float32), params["target"][None]])  # [t + 1, P, D]
    embedded = jnp.take(embedding, tokens, axis=0).astype(jnp.float32)  # [B, T, D]
    real = (tokens > 0)[..., None]  # [B, T, 1]
    pooled = jnp.max(jnp.where(real, embedded, -jnp.inf), axis=1)  # [B, D]
    pooled = jnp.where(real.any(axis=1), pooled, 0.0)  # a row of padding only (a filler row) pools to 0
    hidden = jax.nn.silu(pooled @ params["down"]) @ params["up"]  # [B, D]
    hidden = nn.LayerNorm().apply({"params": params["norm"]}, hidden)
    keys = prompts_all.max(axis=1)  # [t + 1, D]: each prompt max-pooled
    temperature = self.temperature or embedding.shape[-1] * math.e
    weights = jax.nn.softmax(hidden @ keys.T / temperature, axis=-1)  # [B, t + 1]
    prompt = params["target"][None] + jnp.einsum("bk,kpd->bpd", weights, prompts_all)  # [B, P, D]
    return prompt, weights

  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None, inputs=None) -> Adapters:
    """The input site's prompt [B, P, D] of each row; `inputs` is (embedding [V, D], encoder tokens int [B, T]).

    Raises:
      ValueError: no inputs (a path that computes the adapters without the batch, such as a server or
        `infer.prompt_files`).
    """
    del config, task_ids
    if inputs is None:
      raise ValueError(
        "ATTEMPT computes each row's prompt from that row's input (Asai et al. 2022, section 3.2); this path gives "
        "the methods no input: train, eval or infer it with its run config (TunedT5.adapters with the batch's tokens)."
      )
    return {"input": {"prompt": self.attention(params, *inputs)[0]}}

  def fold(self, params: PyTree, config: T5Config) -> PyTree:
    del config
    return {**params, SOURCES: params.get(SOURCES, self.source_prompts)}

  def export(
    self, params: PyTree, config: T5Config, folder: str | Path, metadata: dict[str, str] | None = None
  ) -> list[Path]:
    record = {SOURCES_KEY: json.dumps(self.sources.record())}
    return write_tree(self.fold(params, config), self.name, folder, {**record, **(metadata or {})})

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    """The folded tree `export` wrote.

    Raises:
      FileNotFoundError: no export in `folder`.
      ValueError: an export of another shape.
      SourcesChangedError: an export whose sources are not this config's.
    """
    tree = read_tree(self.name, folder)
    expected = {"target", "down", "up", "norm", SOURCES}
    if not isinstance(tree, dict) or set(tree) != expected:
      raise ValueError(f"{Path(folder) / (self.name + '.safetensors')} is no ATTEMPT export (it holds no {expected}).")
    exported, configured = np.asarray(tree[SOURCES]), self.source_prompts
    if exported.shape != configured.shape or not np.array_equal(exported, configured):
      raise SourcesChangedError(
        f"{Path(folder) / (self.name + '.safetensors')} was trained with the source prompts "
        f"{_exported_names(Path(folder) / (self.name + '.safetensors'))} {list(exported.shape)}, and this config names "
        f"{list(self.sources.names)} {list(configured.shape)}: set ATTEMPT_SOURCES (and ATTEMPT_LIBRARY) to the "
        "sources it was trained with."
      )
    return tree

  @classmethod
  def export_file(cls) -> None:
    return None  # the server's library does not take it (`check`)

  @classmethod
  def unserved_reason(cls) -> str:
    return (
      "method 'attempt' is not served: ATTEMPT computes each row's prompt from that row's input (an attention over "
      "its source prompts, Asai et al. 2022, section 3.2), and a server's rows carry fixed vectors (no adapter site "
      "reads the request's input). Evaluate or infer it with `prompt-tuning eval` / `prompt-tuning infer` and its "
      "run config."
    )

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    del arrays, limits
    raise PromptError(cls.unserved_reason())


def _exported_names(path: Path) -> list[str]:
  from safetensors import safe_open

  with safe_open(str(path), "np") as f:
    record = (f.metadata() or {}).get(SOURCES_KEY)
  return [s.get("name") for s in json.loads(record)] if record else ["(not recorded)"]
