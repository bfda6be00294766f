"""Hugging Face PEFT prompt-tuning adapters: export our prompts, import theirs.

A PEFT prompt-tuning adapter is a folder with

- `adapter_config.json`: `peft_type` "PROMPT_TUNING", `task_type` (T5:
  "SEQ_2_SEQ_LM"), `num_virtual_tokens` P, `token_dim` D,
  `num_transformer_submodules`, ...;
- `adapter_model.safetensors` (older: `adapter_model.bin`): one tensor
  `prompt_embeddings` [P * num_transformer_submodules, D].

PEFT prepends the first P rows to the embedded encoder input of a T5, which is
our "prefix" combination, so `PeftModel.from_pretrained(hf_t5, folder)` gives
the logits of our T5 with the same prompt. PEFT's own seq2seq default is
`num_transformer_submodules` 2, which saves P more rows meant for the decoder
that its prompt tuning never uses; we export 1 (no unused rows) and import
either. Nothing here needs torch or peft.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.prompt_arrays import check_prompt_array, read_safetensors_file
from prompt_tuning.validation import resolve_inside

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
WEIGHTS_KEY = "prompt_embeddings"
PROMPT_TUNING = "PROMPT_TUNING"

_OTHER_TYPES = {
  "LORA": "a LoRA adapter changes the backbone's attention projections (read it as the LoRA method: "
  "prompt_tuning.methods.lora.read_peft)",
  "PREFIX_TUNING": "a PEFT prefix-tuning adapter holds past key/values laid out for Hugging Face's cache",
  "P_TUNING": "a P-tuning adapter computes its prompt with an encoder network",
}


def export_peft_adapter(
  prompt,
  path: str | os.PathLike,
  *,
  base_model_name_or_path: str | None = None,
  task_type: str = "SEQ_2_SEQ_LM",
  num_layers: int | None = None,
  num_attention_heads: int | None = None,
  revision: str | None = None,
) -> Path:
  """Writes `prompt` [P, D] as a PEFT prompt-tuning adapter folder.

  Args:
    prompt: the trained prompt [P, D] (any float dtype; saved as float32).
    path: the folder to write (created).
    base_model_name_or_path: the Hugging Face model it was trained for,
      recorded in the config (PEFT loads the adapter onto any model you give it).
    task_type: PEFT task type: "SEQ_2_SEQ_LM" (T5) or "CAUSAL_LM" (decoder-only).
    num_layers, num_attention_heads: recorded in the config (PEFT does not
      need them for prompt tuning).
    revision: the base model's revision, recorded in the config.

  Returns:
    The folder.
  """
  prompt = check_prompt_array(np.asarray(prompt), source="the prompt to export")
  config: dict[str, Any] = {
    "peft_type": PROMPT_TUNING,
    "task_type": task_type,
    "num_virtual_tokens": int(prompt.shape[0]),
    "token_dim": int(prompt.shape[1]),
    # PEFT's seq2seq default (2) would store P unused rows for the decoder.
    "num_transformer_submodules": 1,
    "num_attention_heads": num_attention_heads,
    "num_layers": num_layers,
    "prompt_tuning_init": "RANDOM",
    "prompt_tuning_init_text": None,
    "tokenizer_name_or_path": None,
    "tokenizer_kwargs": None,
    "base_model_name_or_path": base_model_name_or_path,
    "revision": revision,
    "inference_mode": True,
    "modules_to_save": None,
    "auto_mapping": None,
  }
  return write_adapter_folder(path, config, {WEIGHTS_KEY: prompt})


def write_adapter_folder(path: str | os.PathLike, adapter_config: dict[str, Any], tensors: dict[str, Any]) -> Path:
  """Writes a PEFT adapter folder (any PEFT type): `adapter_config.json` and `adapter_model.safetensors` with
  `tensors` under PEFT's names, as `PeftModel.from_pretrained` reads them; returns the folder (created). A gs://
  folder is written locally, then uploaded (safetensors writes a local file)."""
  from safetensors.numpy import save_file

  from prompt_tuning import storage

  if storage.is_remote(path):
    storage.check_scheme(path, "the adapter folder")
    with tempfile.TemporaryDirectory(prefix="adapter-") as staging:
      write_adapter_folder(staging, adapter_config, tensors)
      storage.upload_folder(staging, storage.path(path))
    return storage.path(path)
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
  save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
  return path


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
  """The adapter's `adapter_config.json`, checked to be a PEFT prompt-tuning adapter.

  Raises:
    FileNotFoundError: the folder has no adapter_config.json.
    ValueError: another kind of PEFT adapter (LoRA, prefix tuning, ...).
  """
  config_path = Path(path) / CONFIG_NAME
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found: {path} is not a PEFT adapter folder.")
  try:
    config = json.loads(config_path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path} is not valid JSON ({e}); it is corrupt: export the adapter again.") from e
  if not isinstance(config, dict):
    raise CheckpointError(f"{config_path} holds a JSON {type(config).__name__}, not an object: export it again.")
  peft_type = str(config.get("peft_type", "")).upper()
  if peft_type != PROMPT_TUNING:
    why = _OTHER_TYPES.get(peft_type, "it is not a soft prompt")
    raise ValueError(
      f"{path} is a PEFT {peft_type or 'unknown-type'} adapter; only PEFT prompt-tuning adapters "
      f"(peft_type {PROMPT_TUNING}) can be imported as a prompt: {why}. Load it with PEFT itself, or export a "
      "prompt-tuning adapter."
    )
  return config


def _read_weights(path: Path) -> np.ndarray:
  if (path / WEIGHTS_NAME).is_file():
    tensors = read_safetensors_file(resolve_inside(path, WEIGHTS_NAME, f"the PEFT adapter {path}"))
  elif (path / LEGACY_WEIGHTS_NAME).is_file():
    try:
      import torch
    except ImportError as e:
      raise ValueError(
        f"{path / LEGACY_WEIGHTS_NAME} is a PyTorch pickle and torch is not installed: install torch, or re-save "
        "the adapter with safetensors (PEFT's default)."
      ) from e
    file = resolve_inside(path, LEGACY_WEIGHTS_NAME, f"the PEFT adapter {path}")
    try:
      loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError; torch's advice is dropped
      raise CheckpointError(
        f"{file} cannot be read as tensors only ({type(e).__name__}); it is truncated or holds other Python objects, "
        "which are never unpickled here: export the adapter again with safetensors (PEFT's default)."
      ) from None
    if not isinstance(loaded, dict):
      raise CheckpointError(f"{file} holds {type(loaded).__name__}, not a dict of tensors: export it again.")
    tensors = {k: v.float().numpy() for k, v in loaded.items() if hasattr(v, "float")}
  else:
    raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}).")
  if WEIGHTS_KEY not in tensors:
    raise ValueError(f"the adapter weights in {path} hold {sorted(tensors)}; expected a tensor {WEIGHTS_KEY!r}.")
  return tensors[WEIGHTS_KEY]


def load_peft_adapter(path: str | os.PathLike) -> np.ndarray:
  """Reads a PEFT prompt-tuning adapter folder as our prompt [P, D] (float32).

  With `num_transformer_submodules` 2 (PEFT's seq2seq default) the weights
  hold 2P rows; the first P are the prompt PEFT puts before the encoder input,
  the rest are unused by PEFT's prompt tuning and dropped.

  Raises:
    FileNotFoundError: no adapter config or weights.
    ValueError: another kind of adapter, or weights that disagree with the config.
  """
  path = Path(path)
  config = read_adapter_config(path)
  weights = np.asarray(_read_weights(path))
  length, width = config.get("num_virtual_tokens"), config.get("token_dim")
  submodules = config.get("num_transformer_submodules") or 1
  for key, value in (("num_virtual_tokens", length), ("token_dim", width), ("num_transformer_submodules", submodules)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise CheckpointError(
        f"{path / CONFIG_NAME}: {key} is {value!r}; a prompt-tuning adapter gives a positive integer: fix the file "
        "or export the adapter again."
      )
  expected = (length * submodules, width)
  if weights.shape != expected:
    raise ValueError(
      f"{path}: {WEIGHTS_KEY} has shape {weights.shape} but adapter_config.json says num_virtual_tokens={length}, "
      f"num_transformer_submodules={submodules}, token_dim={width}, i.e. {expected}. The folder is inconsistent."
    )
  return check_prompt_array(weights[:length], source=f"the PEFT adapter {path}")
