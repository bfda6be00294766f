"""Hugging Face T5 folders: read (`config.json` + weights) and write (safetensors).

Weights are read, in this order of preference, from `model.safetensors.index.json`
(sharded), `model.safetensors`, `flax_model.msgpack`, `pytorch_model.bin.index.json`
or `pytorch_model.bin`. PyTorch files are opened only with
`torch.load(weights_only=True)`; nothing else is ever unpickled.

Output projection. Hugging Face T5 1.0 ties the output projection to `shared`
and scales the decoder output by `d_model ** -0.5` (our `logits_via_embedding`);
T5 1.1 has its own `lm_head` and no scaling. Recent transformers versions write
`"scale_decoder_outputs"` beside `"tie_word_embeddings"`, and may leave
`lm_head.weight` out of the file when it equals `shared.weight`. We read:
scaling on -> tied (`lm_head.weight` ignored); scaling off -> our
`logits_dense` from `lm_head.weight`, or from `shared.weight` when the file has
no `lm_head.weight`. (transformers 5 itself would use an `lm_head.weight` that
differs from `shared.weight` even with scaling on; no published T5 has one.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from prompt_tuning.checkpoints import hf_names
from prompt_tuning.checkpoints.errors import CheckpointError, format_list
from prompt_tuning.checkpoints.param_tree import CheckpointContents, LazyArray, flatten, in_memory
from prompt_tuning.models.configs import T5Config, activations_from_feed_forward_proj
from prompt_tuning.validation import resolve_inside

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
# The sha256 of the weight files, in `sha256sum`'s format ("<hex>  <name>" a line; `sha256sum -c SHA256SUMS` checks
# them by hand): written with every folder this project writes (export, the shipped demo models) and checked when
# read, since safetensors keeps no checksum. A folder without it (one saved by transformers) cannot be checked.
CHECKSUMS_FILE = "SHA256SUMS"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_FILE = "flax_model.msgpack"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS_FILE, FLAX_FILE, TORCH_INDEX, TORCH_FILE)

_MODEL_TYPES = ("t5", "mt5")
# Our mlp_activations -> Hugging Face feed_forward_proj (what both sides can express).
_FEED_FORWARD_PROJ = {
  ("relu",): "relu",
  ("gelu", "linear"): "gated-gelu",
  ("relu", "linear"): "gated-relu",
  ("silu", "linear"): "gated-silu",
}
# Hugging Face's defaults for fields a config.json may leave out.
_HF_DEFAULTS = {
  "vocab_size": 32128,
  "d_model": 512,
  "d_kv": 64,
  "d_ff": 2048,
  "num_layers": 6,
  "num_heads": 8,
  "relative_attention_num_buckets": 32,
  "relative_attention_max_distance": 128,
  "dropout_rate": 0.1,
  "layer_norm_epsilon": 1e-6,
  "feed_forward_proj": "relu",
}

Arrays = dict[str, LazyArray]


def is_folder(path: str) -> bool:
  """Whether `path` looks like a Hugging Face model folder (it has a config.json)."""
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


# ---------------------------------------------------------------------------
# config.json


def _read_json(file: str) -> Any:
  try:
    with open(file, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise CheckpointError(f"Cannot read {file}: {e}") from e
  except ValueError as e:
    raise CheckpointError(f"{file} is not valid JSON ({e}); it is truncated or corrupt: download it again.") from e


def _scales_decoder_output(hf_config: Mapping[str, Any]) -> bool:
  if hf_config.get("scale_decoder_outputs") is not None:
    return bool(hf_config["scale_decoder_outputs"])
  return bool(hf_config.get("tie_word_embeddings", True))


def config_from_hf(hf_config: Mapping[str, Any], file: str) -> T5Config:
  """Our T5Config for a Hugging Face T5 `config.json` (as a dict).

  Raises:
    CheckpointError: for a model type other than T5/mT5 or an unknown
      `feed_forward_proj`.
  """
  model_type = hf_config.get("model_type", "t5")
  if model_type not in _MODEL_TYPES:
    raise CheckpointError(
      f"{file} describes a {model_type!r} model; only T5 and mT5 ({', '.join(_MODEL_TYPES)}) can be loaded."
    )
  get = lambda name: hf_config[name] if hf_config.get(name) is not None else _HF_DEFAULTS[name]
  feed_forward_proj = get("feed_forward_proj")
  try:
    activations = activations_from_feed_forward_proj(feed_forward_proj)
  except ValueError as e:
    raise CheckpointError(f"{file}: {e}") from e
  num_layers = get("num_layers")
  return T5Config(
    vocab_size=get("vocab_size"),
    emb_dim=get("d_model"),
    num_heads=get("num_heads"),
    head_dim=get("d_kv"),
    mlp_dim=get("d_ff"),
    num_encoder_layers=num_layers,
    num_decoder_layers=hf_config.get("num_decoder_layers") or num_layers,
    mlp_activations=activations,
    logits_via_embedding=_scales_decoder_output(hf_config),
    relative_attention_num_buckets=get("relative_attention_num_buckets"),
    relative_attention_max_distance=get("relative_attention_max_distance"),
    dropout_rate=get("dropout_rate"),
    layer_norm_epsilon=get("layer_norm_epsilon"),
  )


def hf_config_from(config: T5Config, dtype: str) -> dict[str, Any]:
  """The Hugging Face `config.json` dict for `config`.

  Raises:
    CheckpointError: for a decoder-only model or MLP activations Hugging Face
      T5 cannot express.
  """
  if config.decoder_only:
    raise CheckpointError(
      "Hugging Face T5 has no decoder-only variant, so a decoder-only model cannot be saved in its format; "
      "save it with the training checkpoints (orbax) instead."
    )
  feed_forward_proj = _FEED_FORWARD_PROJ.get(tuple(config.mlp_activations))
  if feed_forward_proj is None:
    raise CheckpointError(
      f"mlp_activations={config.mlp_activations} has no Hugging Face feed_forward_proj; the format supports "
      f"{', '.join(map(str, _FEED_FORWARD_PROJ))}."
    )
  return {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "vocab_size": config.vocab_size,
    "d_model": config.emb_dim,
    "d_kv": config.head_dim,
    "d_ff": config.mlp_dim,
    "num_layers": config.num_encoder_layers,
    "num_decoder_layers": config.num_decoder_layers,
    "num_heads": config.num_heads,
    "relative_attention_num_buckets": config.relative_attention_num_buckets,
    "relative_attention_max_distance": config.relative_attention_max_distance,
    "dropout_rate": config.dropout_rate,
    "layer_norm_epsilon": config.layer_norm_epsilon,
    "feed_forward_proj": feed_forward_proj,
    "tie_word_embeddings": config.logits_via_embedding,
    "is_encoder_decoder": True,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "initializer_factor": 1.0,
    "use_cache": True,
    "dtype": dtype,
  }


# ---------------------------------------------------------------------------
# Weight files -> {Hugging Face (PyTorch) name: LazyArray}


def _safetensors_error(file: str, error: Exception) -> CheckpointError:
  return CheckpointError(
    f"Cannot read {file}: {error}\nThe file is truncated or corrupt (an interrupted download or copy?); "
    "download or save it again."
  )


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


@functools.cache
def check_cache_blob(file: str) -> None:
  """Checks a weight file of a Hugging Face cache snapshot against the checksum the cache names it by.

  The hub cache keeps each large (LFS) file once, as `blobs/<sha256 of its bytes>`, and links it into
  `snapshots/<revision>/`. safetensors and PyTorch files carry no checksum of their own, so this is what finds a
  bit flipped on disk after the download. Files outside such a cache (a plain copy) cannot be checked. Once per
  file and process (hashing reads the whole file, as loading it does).

  Raises:
    CheckpointError: the bytes do not match, naming the file and what to do.
  """
  blob = os.path.realpath(file)
  if not (os.path.islink(file) and os.path.basename(os.path.dirname(blob)) == "blobs"):
    return
  expected = os.path.basename(blob)
  if not _SHA256_NAME.fullmatch(expected):
    return  # a small file stored by its git hash (sha1 of a header and the bytes), not a weight file
  digest = hashlib.sha256()
  with open(blob, "rb") as f:
    while chunk := f.read(1 << 24):
      digest.update(chunk)
  if digest.hexdigest() != expected:
    raise CheckpointError(
      f"{file} is damaged: its bytes ({blob}) do not match the sha256 the Hugging Face cache recorded at download "
      f"({expected}; now {digest.hexdigest()}). Delete {blob} and download the model again."
    )


def _sha256_of(file: str) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    while chunk := f.read(1 << 24):
      digest.update(chunk)
  return digest.hexdigest()


def listed_sums(folder: str) -> dict[str, str]:
  """{file name: sha256} from the folder's `SHA256SUMS` ({} without one)."""
  path = os.path.join(folder, CHECKSUMS_FILE)
  if not os.path.isfile(path):
    return {}
  sums = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, 1):
      match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line.rstrip("\n"))
      if line.strip() and not match:
        raise CheckpointError(f"{path} line {number} is not '<sha256>  <file name>'; restore the file or delete it.")
      if match:
        sums[match.group(2)] = match.group(1)
  return sums


@functools.cache
def _check_listed_sum(file: str, size: int, mtime_ns: int) -> None:
  expected = listed_sums(os.path.dirname(file)).get(os.path.basename(file))
  if expected is not None and (found := _sha256_of(file)) != expected:
    raise CheckpointError(
      f"{file} is damaged: its sha256 ({found}) is not the one {CHECKSUMS_FILE} beside it records ({expected}), so "
      "its weights changed after they were written. Copy the folder again from where it came from (for the shipped "
      "demo models: reinstall the package)."
    )


def check_listed_sum(file: str) -> None:
  """Checks a weight file against the `SHA256SUMS` of its folder, when the folder has one and lists it (once per
  file, size and modification time in a process: hashing reads the whole file, as loading it does).

  Raises:
    CheckpointError: the bytes do not match, naming the file and what to do.
  """
  stat = os.stat(file)
  _check_listed_sum(os.path.realpath(file), stat.st_size, stat.st_mtime_ns)


def write_sums(folder: str, names: list[str]) -> None:
  """Writes `SHA256SUMS` for the files `names` of `folder`."""
  with open(os.path.join(folder, CHECKSUMS_FILE), "w", encoding="utf-8") as f:
    f.writelines(f"{_sha256_of(os.path.join(folder, name))}  {name}\n" for name in sorted(names))


def _read_safetensors_file(file: str) -> Arrays:
  from safetensors import safe_open

  check_cache_blob(file)

  def read(name: str) -> np.ndarray:
    try:
      with safe_open(file, framework="np") as f:
        return f.get_tensor(name)
    except Exception as e:  # SafetensorError derives from Exception only.
      raise _safetensors_error(file, e) from e

  try:
    with safe_open(file, framework="np") as f:
      shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
  except OSError as e:
    raise CheckpointError(f"Cannot read {file}: {e}") from e
  except Exception as e:
    raise _safetensors_error(file, e) from e
  check_listed_sum(file)  # after the header is read: a truncated file gets safetensors' own message
  source = os.path.basename(file)
  return {name: LazyArray(shape, lambda name=name: read(name), f"{source}: {name}") for name, shape in shapes.items()}


def _read_sharded(folder: str, index_name: str, read_file) -> Arrays:
  """Reads the shards an index (`*.index.json`) lists, checking each holds what the index says."""
  index_file = os.path.join(folder, index_name)
  weight_map = _read_json(index_file).get("weight_map")
  if not isinstance(weight_map, Mapping):
    raise CheckpointError(f"{index_file} has no 'weight_map'; it is corrupt: download it again.")
  shards = sorted(set(weight_map.values()))
  for shard in shards:
    if not isinstance(shard, str):
      raise CheckpointError(f"{index_file} names a shard {shard!r} that is not a file name; download it again.")
    resolve_inside(folder, shard, index_file)
  absent = [shard for shard in shards if not os.path.isfile(os.path.join(folder, shard))]
  if absent:
    raise CheckpointError(
      f"{index_file} lists shard file(s) that are not in {folder}:\n{format_list(absent)}\n"
      "Download the missing shards (or the whole folder) again."
    )
  arrays: Arrays = {}
  for shard in shards:
    arrays.update(read_file(os.path.join(folder, shard)))
  lost = [f"{name} (in {shard})" for name, shard in sorted(weight_map.items()) if name not in arrays]
  if lost:
    raise CheckpointError(
      f"{index_file} lists tensors their shard files do not hold:\n{format_list(lost)}\n"
      "The shards are from another save of the model, or corrupt: download the folder again."
    )
  return arrays


def _read_flax_msgpack(file: str) -> Arrays:
  from flax import serialization

  try:
    with open(file, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except OSError as e:
    raise CheckpointError(f"Cannot read {file}: {e}") from e
  except Exception as e:  # msgpack raises many types on bad bytes.
    raise CheckpointError(
      f"{file} is not a readable msgpack file ({type(e).__name__}: {e}); it is truncated or corrupt: download it again."
    ) from e
  if not isinstance(tree, Mapping):
    raise CheckpointError(f"{file} does not hold a tree of named arrays (found {type(tree).__name__}).")
  arrays: Arrays = {}
  for flax_path, value in flatten(tree).items():
    name, transposed = hf_names.torch_name_from_flax(flax_path)
    lazy = in_memory(value, f"{FLAX_FILE}: {flax_path}")
    arrays[name] = lazy.transposed() if transposed and lazy.shape and len(lazy.shape) == 2 else lazy
  return arrays


def _torch_to_numpy(tensor: Any) -> np.ndarray:
  import torch

  tensor = tensor.detach().cpu()
  if tensor.dtype in (torch.bfloat16, torch.float16):
    tensor = tensor.to(torch.float32)  # numpy has no bfloat16; float32 holds both exactly.
  return tensor.numpy()


def _read_torch_file(file: str) -> Arrays:
  try:
    import torch
  except ImportError as e:
    folder = os.path.dirname(file)
    raise CheckpointError(
      f"{file} is a PyTorch pickle and reading it needs PyTorch, which is not installed. Either install torch, or "
      "convert the folder to safetensors where torch is available:\n"
      "  from transformers import T5ForConditionalGeneration\n"
      f"  T5ForConditionalGeneration.from_pretrained({folder!r}).save_pretrained({folder!r}, "
      "safe_serialization=True)"
    ) from e
  check_cache_blob(file)
  check_listed_sum(file)
  try:
    state_dict = torch.load(file, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's message goes on to suggest weights_only=False, which this project never does; keep its diagnosis.
    lines = [line.strip() for line in str(e).splitlines() if "WeightsUnpickler error" in line]
    raise CheckpointError(
      f"{file} holds objects other than tensors, which are never unpickled here "
      f"({lines[0] if lines else type(e).__name__}). Convert it to safetensors with transformers where you trust "
      "the file: from_pretrained(folder).save_pretrained(folder, safe_serialization=True)."
    ) from e
  except Exception as e:  # RuntimeError / EOFError for truncated or damaged zip archives.
    raise CheckpointError(
      f"Cannot read {file} with torch.load(weights_only=True): {e}\nThe file is truncated or corrupt; download "
      "it again or convert it to safetensors with transformers."
    ) from e
  if not isinstance(state_dict, Mapping):
    raise CheckpointError(f"{file} does not hold a state dict (found {type(state_dict).__name__}).")
  source = os.path.basename(file)
  return {
    name: in_memory(_torch_to_numpy(value) if isinstance(value, torch.Tensor) else value, f"{source}: {name}")
    for name, value in state_dict.items()
  }


def read_weights(folder: str) -> Arrays:
  """Lists the weights of a Hugging Face folder under their PyTorch names, picking the preferred file.

  Raises:
    CheckpointError: when no known weight file is present, or one is
      unreadable, truncated or inconsistent with its index.
  """
  present = lambda name: os.path.isfile(os.path.join(folder, name))
  if present(SAFETENSORS_INDEX):
    return _read_sharded(folder, SAFETENSORS_INDEX, _read_safetensors_file)
  if present(SAFETENSORS_FILE):
    return _read_safetensors_file(os.path.join(folder, SAFETENSORS_FILE))
  if present(FLAX_FILE):
    return _read_flax_msgpack(os.path.join(folder, FLAX_FILE))
  if present(TORCH_INDEX):
    return _read_sharded(folder, TORCH_INDEX, _read_torch_file)
  if present(TORCH_FILE):
    return _read_torch_file(os.path.join(folder, TORCH_FILE))
  found = sorted(os.listdir(folder))
  other = [name for name in found if name.endswith((".h5", ".ckpt", ".pt", ".pth", ".gguf"))]
  hint = (
    f" {', '.join(other)} cannot be read here: convert the model with transformers "
    "(from_pretrained(...).save_pretrained(folder, safe_serialization=True))."
    if other
    else ""
  )
  raise CheckpointError(
    f"{folder} has a config.json but no weights: expected one of {', '.join(WEIGHT_FILES)}; found "
    f"{', '.join(found[:20]) or 'nothing else'}.{hint}"
  )


# ---------------------------------------------------------------------------
# Hugging Face names -> our parameters


def _output_projection(weights: Arrays, hf_config: Mapping[str, Any], file: str) -> LazyArray | None:
  """Our `decoder/logits_dense/kernel` ([embed, vocab]), or None when the logits use the scaled embedding."""
  lm_head = weights.get(hf_names.LM_HEAD)
  if _scales_decoder_output(hf_config):
    if lm_head is not None:
      logger.info("%s: the output is tied to shared.weight, so %s is ignored.", file, lm_head.source)
    return None
  if lm_head is not None:
    return lm_head.transposed()
  shared = weights.get(hf_names.SHARED)
  if shared is None:
    return None  # Reported as missing by the validation.
  logger.info("%s: no lm_head.weight and no output scaling: the output projection is shared.weight.", file)
  return dataclasses.replace(shared.transposed(), source=f"{shared.source} (as lm_head.weight)")


def to_our_names(weights: Arrays, hf_config: Mapping[str, Any], file: str) -> tuple[Arrays, list[str]]:
  """Renames (and transposes) Hugging Face weights into our parameter paths.

  Returns:
    (our path -> array, the names that map to no parameter of ours).
  """
  weights = dict(weights)
  if hf_names.SHARED not in weights:  # Some saves keep only the tied copies.
    for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
      if copy in weights:
        weights[hf_names.SHARED] = weights[copy]
        break
  arrays: Arrays = {}
  unrecognized = []
  for name, lazy in weights.items():
    if name in hf_names.IGNORED or name == hf_names.LM_HEAD:
      continue
    mapped = hf_names.our_path(name)
    if mapped is None:
      unrecognized.append(lazy.source)
      continue
    path, transposed = mapped
    arrays[path] = lazy.transposed() if transposed else lazy
  logits = _output_projection(weights, hf_config, file)
  if logits is not None:
    arrays["decoder/logits_dense/kernel"] = logits
  return arrays, unrecognized


def read_folder(folder: str) -> CheckpointContents:
  """Lists the parameters of a Hugging Face T5 folder under our names, with the config it declares.

  Raises:
    CheckpointError: see `config_from_hf` and `read_weights`.
  """
  config_file = os.path.join(folder, CONFIG_FILE)
  hf_config = _read_json(config_file)
  if not isinstance(hf_config, Mapping):
    raise CheckpointError(f"{config_file} does not hold a JSON object; it is corrupt: download it again.")
  config = config_from_hf(hf_config, config_file)
  weights = read_weights(folder)
  arrays, unrecognized = to_our_names(weights, hf_config, folder)
  # Files whose output projection we build from lm_head (or shared) are untied for us.
  config = config.replace(logits_via_embedding="decoder/logits_dense/kernel" not in arrays)
  return CheckpointContents(
    arrays=arrays,
    unrecognized=unrecognized,
    location=folder,
    config=config,
    config_source=config_file,
    name_in_file=hf_names.hf_name_or_path,
  )


# ---------------------------------------------------------------------------
# Writing


def _to_numpy(value: Any) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype not in (np.float32, np.float16) and array.dtype.name != "bfloat16":
    array = array.astype(np.float32)
  return np.ascontiguousarray(array)


def write_folder(folder: str, config: T5Config, flat_params: Mapping[str, Any]) -> None:
  """Writes `config.json` and `model.safetensors` for already validated parameters.

  Raises:
    CheckpointError: see `hf_config_from`; or for a parameter with no
      Hugging Face name.
  """
  from safetensors.numpy import save_file

  tensors = {}
  for path, value in flat_params.items():
    named = hf_names.hf_name(path)
    if named is None:
      raise CheckpointError(f"Parameter {path} has no Hugging Face T5 name; it cannot be saved in that format.")
    name, transposed = named
    array = _to_numpy(value)
    tensors[name] = np.ascontiguousarray(array.T) if transposed else array
  dtypes = {array.dtype.name for array in tensors.values()}
  hf_config = hf_config_from(config, dtype=dtypes.pop() if len(dtypes) == 1 else "float32")
  os.makedirs(folder, exist_ok=True)
  save_file(tensors, os.path.join(folder, SAFETENSORS_FILE), metadata={"format": "pt"})
  write_sums(folder, [SAFETENSORS_FILE])
  with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
    f.write("\n")
