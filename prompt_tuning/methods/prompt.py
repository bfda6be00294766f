"""Prompt tuning (Lester et al., 2021): P vectors joined to the embedded input.

Parameters: {"prompt": [P, D]} float32, logical axes ("prompt",
"prompt_embed") (replicated, unfactored). The prompt feeds the "input" site;
where it joins the tokens is the run's prompt combination
(`prompt_tuning.combine`). Initializers live in `prompt_tuning.prompts`.

Settings, like every method's, are its own and gin-configurable:
gin/runs/run_config.gin binds `RunConfig.prompt = %PROMPT_METHOD` (defaults.gin:
`@prompt_tuning.methods.Prompt()`; a method file that replaces the prompt sets the
macro to None) with `Prompt.length = %PROMPT_LENGTH` and `Prompt.initializer = %PROMPT_INIT`
(the reference implementation's macro names; a prompts/ gin file sets
PROMPT_INIT). PROMPT_LENGTH = 0 (prefix and model tuning set it) is a prompt
of no vectors: the run leaves the method out (`used`).

Export (train writes it beside each checkpoint, MODEL_DIR/numpy_checkpoints/
checkpoint_<step>/): `prompt.npy` (the reference implementation's format) and
`prompt.safetensors` (tensor "prompt"). A user hands a prompt in as the array
"prompt" [P, D], or as any prompt file (`read_file`, through
`prompt_tuning.checkpoints.prompt_files`: .npy, .safetensors, a PEFT folder, a
training step folder or a MODEL_DIR, old runs' included).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import gin
import jax
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning import prompts, validation
from prompt_tuning.methods.base import Limits, Method, PromptError, PyTree
from prompt_tuning.models.adapters import Adapters
from prompt_tuning.models.configs import T5Config


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class Prompt(Method):
  """A soft prompt of `length` vectors made by `initializer`.

  Attributes:
    length: prompt positions P (PROMPT_LENGTH; Lester et al.: 100); 0: no prompt (see `used`).
    initializer: makes the vectors (PROMPT_INIT), e.g. `prompts.sampled_vocab()`; needed when `length` > 0.
  """

  length: int
  initializer: prompts.Initializer | None = None
  name = "prompt"
  leaves = (("input", "prompt"), ("input", "prompt_lengths"))

  @property
  def input_length(self) -> int:
    return self.length

  @property
  def used(self) -> bool:
    """Whether the prompt has vectors: a run leaves a prompt of length 0 out of its methods."""
    return self.length > 0

  def __post_init__(self):
    validation.require_int(self.length, "PROMPT_LENGTH", minimum=0)
    if self.used and self.initializer is None:
      raise ValueError(
        "a prompt needs an initializer: set PROMPT_INIT (e.g. PROMPT_INIT = @prompt_tuning.prompts.sampled_vocab(), "
        "or include a prompts/ gin file), or PROMPT_LENGTH = 0 for no prompt."
      )

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    del config
    return prompts.init_prompt(rng, self.initializer, backbone["token_embedder"]["embedding"], self.length)

  def logical_axes(self, shapes: PyTree) -> PyTree:
    return PartitionSpec(*prompts.PROMPT_AXES)

  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None) -> Adapters:
    del config, task_ids
    return {"input": {"prompt": params}}

  def export(
    self, params: PyTree, config: T5Config, folder: str | Path, metadata: dict[str, str] | None = None
  ) -> list[Path]:
    from prompt_tuning.checkpoints.prompt_files import save_prompt_file

    folder = Path(folder)
    return [
      save_prompt_file(folder / "prompt.npy", params),
      save_prompt_file(folder / "prompt.safetensors", params, metadata),
    ]

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    from prompt_tuning.checkpoints.prompt_files import load_prompt_file

    return load_prompt_file(Path(folder) / "prompt.npy", embed_dim=config.emb_dim)

  @classmethod
  def export_file(cls) -> None:
    return None  # an export folder is a prompt file like the others (`read_file`)

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    if set(arrays) != {"prompt"}:
      raise PromptError(f"method 'prompt' takes one array named 'prompt' [P, {limits.emb_dim}]; got {sorted(arrays)}.")
    shape = arrays["prompt"].shape
    if len(shape) != 2 or shape[0] < 1:
      raise PromptError(f"'prompt' has shape {list(shape)}; a prompt is [P, D] (length, embedding width).")
    if shape[1] != limits.emb_dim:
      raise PromptError(
        f"'prompt' has width {shape[1]} but this backbone embeds tokens in {limits.emb_dim} dimensions; the prompt "
        "was trained for another model size."
      )
    limits.check_prompt_length("'prompt'", shape[0])

  @classmethod
  def entry(cls, arrays: Mapping[str, np.ndarray]) -> Adapters:
    return {"input": {"prompt": arrays["prompt"]}}

  @classmethod
  def read_file(cls, path: Path) -> dict[str, np.ndarray]:
    from prompt_tuning.checkpoints.prompt_files import load_prompt_file

    return {"prompt": load_prompt_file(path)}
