"""A prompt as arrays: the checks every prompt read or written passes (`check_prompt_array`), and safetensors files
read with our errors (`read_safetensors_file`). Shared by the prompt file formats (`prompt_files`) and PEFT adapters
(`peft`), which `prompt_files` reads among its formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prompt_tuning.checkpoints.errors import CheckpointError


def read_safetensors_file(path: Path) -> dict[str, np.ndarray]:
  """safetensors.numpy.load_file, its errors turned into ours.

  Raises:
    CheckpointError: a truncated or non-safetensors file.
  """
  from safetensors.numpy import load_file

  try:
    return load_file(str(path))
  except Exception as e:  # noqa: BLE001 - SafetensorError derives from Exception only
    raise CheckpointError(
      f"{path} is truncated or not a safetensors file ({type(e).__name__}: {e}); save or copy it again."
    ) from e


def check_prompt_array(prompt: np.ndarray, embed_dim: int | None = None, source: str = "the prompt") -> np.ndarray:
  """Checks a prompt is finite floats [P, D] (D = embed_dim when given); returns it as float32.

  Raises:
    ValueError: saying what was wrong and what is expected.
  """
  prompt = np.asarray(prompt)
  if not np.issubdtype(prompt.dtype, np.floating):
    raise ValueError(f"{source} holds {prompt.dtype} values; a prompt holds floats [P, D].")
  if prompt.ndim != 2 or prompt.shape[0] < 1:
    raise ValueError(f"{source} has shape {prompt.shape}; a prompt is [P, D] (prompt length, embedding width).")
  if embed_dim is not None and prompt.shape[1] != embed_dim:
    raise ValueError(
      f"{source} has shape {prompt.shape}: vectors of width {prompt.shape[1]}, but the backbone embeds tokens in "
      f"{embed_dim} dimensions. The prompt was trained for another model size; use a prompt of that model's width."
    )
  if not np.all(np.isfinite(prompt)):
    raise ValueError(f"{source} contains NaN or infinite values; it cannot be used.")
  largest = float(np.max(np.abs(prompt)))
  if largest > np.finfo(np.float32).max:  # finite float64 that float32 cannot hold: it would become inf
    raise ValueError(
      f"{source} holds values up to {largest:.3g}, beyond float32's range ({np.finfo(np.float32).max:.3g}); "
      "prompts are used in float32: it cannot be used."
    )
  return prompt.astype(np.float32)
