"""Prompt tuning (Lester et al., 2021): P vectors joined to the embedded input.

Parameters: {"prompt": [P, D]} float32, logical axes ("prompt",
"prompt_embed") (replicated, unfactored). The prompt feeds the "input" site;
where it joins the tokens is the run's prompt combination
(`prompt_tuning.combine`). Initializers live in `prompt_tuning.prompts`.
Export: `prompt.npy` (the reference implementation's format) and
`prompt.safetensors` (tensor "prompt").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gin
import jax
from jax.sharding import PartitionSpec

from prompt_tuning import prompts
from prompt_tuning.methods.base import Method, PyTree
from prompt_tuning.models.configs import T5Config


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class Prompt(Method):
  """A soft prompt of `length` vectors made by `initializer` (e.g. `prompts.sampled_vocab()`)."""

  length: int
  initializer: prompts.Initializer | None = None
  name = "prompt"

  @property
  def input_length(self) -> int:
    return self.length

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f"prompt length must be >= 1, got {self.length}; set PROMPT_LENGTH to a positive number.")
    if self.initializer is None:
      raise ValueError("a prompt needs an initializer: set PROMPT_INIT (e.g. @prompt_tuning.prompts.sampled_vocab()).")

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    del config
    return prompts.init_prompt(rng, self.initializer, backbone["token_embedder"]["embedding"], self.length)

  def logical_axes(self, shapes: PyTree) -> PyTree:
    return PartitionSpec(*prompts.PROMPT_AXES)

  def adapters(self, params: PyTree, config: T5Config):
    del config
    return {"input": {"prompt": params}}

  def export(self, params: PyTree, config: T5Config, folder: str | Path) -> list[Path]:
    from prompt_tuning.checkpoints.prompt_files import save_prompt_file

    folder = Path(folder)
    return [save_prompt_file(folder / "prompt.npy", params), save_prompt_file(folder / "prompt.safetensors", params)]

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    from prompt_tuning.checkpoints.prompt_files import load_prompt_file

    return load_prompt_file(Path(folder) / "prompt.npy", embed_dim=config.emb_dim)
