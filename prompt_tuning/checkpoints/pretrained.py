"""`load_pretrained` and `save_hf_pretrained`: the frozen backbone in and out.

    config, params = load_pretrained("gs-copy/t5_1_1_lm100k_base/checkpoint_1100000")   # T5X, legacy or orbax
    config, params = load_pretrained("t5x_model_dir", config="t5_1_1_base")            # latest checkpoint_N
    config, params = load_pretrained("gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000")
    config, params = load_pretrained("hf/t5-v1_1-base")                                 # config.json + weights
    config, params = load_pretrained("google/flan-t5-xl@main")                          # a Hugging Face Hub id
    config, params = load_pretrained(path, config="t5_1_1_xxl", shardings=tree)         # jax.Arrays, read by shard
    save_hf_pretrained("out/my-t5", config, params)

Every load checks the parameters against `param_shapes(config)` (missing,
unexpected, shape) before reading their values; nothing is ever half-loaded.
`gs://` paths (legacy T5X checkpoints) are read through tensorstore's gcs
driver (`checkpoints.remote`); hub ids through huggingface_hub's cache
(`checkpoints.hub`). With `shardings`, each process reads only the blocks its
devices hold.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from prompt_tuning.checkpoints import architecture, hub, huggingface, remote, t5x
from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.param_tree import (
  CheckpointContents,
  expected_shapes,
  flatten,
  in_memory,
  materialize,
  materialize_sharded,
  validate,
)
from prompt_tuning.models.configs import T5Config

logger = logging.getLogger(__name__)


class Format(enum.Enum):
  """The checkpoint formats `load_pretrained` reads."""

  T5X_LEGACY = "t5x-legacy"
  T5X_ORBAX = "t5x-orbax"
  HUGGING_FACE = "hugging-face"


_EXPECTED = (
  "a Hugging Face folder (config.json with one of " + ", ".join(huggingface.WEIGHT_FILES) + "), "
  "a T5X checkpoint folder (checkpoint_N/ holding a msgpack `checkpoint` file and target.* zarr folders, "
  "or an orbax checkpoint with _METADATA), or a T5X model folder holding checkpoint_N folders"
)


def _format_of(folder: str) -> tuple[Format, str] | None:
  if huggingface.is_folder(folder):
    return Format.HUGGING_FACE, folder
  if (item_dir := t5x.orbax_item_dir(folder)) is not None:
    return Format.T5X_ORBAX, item_dir
  if t5x.is_legacy(folder):
    return Format.T5X_LEGACY, folder
  return None


def detect_format(path: str | os.PathLike) -> tuple[Format, str]:
  """Finds which checkpoint format `path` holds, and the folder to read.

  `path` may be a checkpoint folder, a file inside one (`.../checkpoint_3/checkpoint`,
  `.../model.safetensors`), or a T5X model folder whose largest `checkpoint_N`
  is taken. `gs://` paths are looked up in the bucket; a Hugging Face Hub id
  (`org/name` or `org/name@revision`, when no local path of that name exists)
  is resolved to its snapshot folder in the hub cache, downloading it unless
  `HF_HUB_OFFLINE=1`.

  Raises:
    CheckpointError: when the path does not exist or holds no known format
      (saying which files were expected and which were found).
  """
  given = os.fspath(path)
  if remote.is_gcs(given):
    return _detect_gcs_format(given)
  if (hub_id := hub.parse_hub_id(given)) is not None:
    folder = hub.resolve(*hub_id)
    if not huggingface.is_folder(folder):
      raise _unknown_format(folder)
    return Format.HUGGING_FACE, folder
  path = os.path.abspath(os.path.expanduser(given))
  if not os.path.exists(path):
    raise _not_found(given, path)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  found = _format_of(folder)
  if found is None and (step_dir := t5x.latest_step_dir(folder)) is not None:
    found = _format_of(step_dir)
    if found is None:
      raise CheckpointError(
        f"{step_dir} (the latest checkpoint in {folder}) is not a T5X checkpoint: expected {_EXPECTED}."
      )
    logger.info("Reading the latest checkpoint of %s: %s", folder, step_dir)
  if found is None:
    raise _unknown_format(folder)
  return found


def _detect_gcs_format(path: str) -> tuple[Format, str]:
  """The format of a gs:// checkpoint: legacy T5X is read in place; other formats are refused with what to do."""
  folder = path.rstrip("/")
  if remote.is_file(folder):
    folder = remote.parent(folder)
  if t5x.is_legacy(folder):
    return Format.T5X_LEGACY, folder
  names = remote.child_names(folder)
  if not names:
    raise CheckpointError(f"No checkpoint at {path}: nothing is stored under that path in the bucket.")
  if (step_dir := t5x.latest_step_dir(folder)) is not None and t5x.is_legacy(step_dir):
    logger.info("Reading the latest checkpoint of %s: %s", folder, step_dir)
    return Format.T5X_LEGACY, step_dir
  if huggingface.CONFIG_FILE in names:
    what = "a Hugging Face folder; load it by its hub id (org/name), or copy it to a local folder (gsutil -m cp -r)"
  elif {"_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA"} & names:
    what = "an orbax checkpoint; copy it to a local folder first (gsutil -m cp -r)"
  else:
    what = f"no T5X checkpoint (found: {', '.join(sorted(names)[:15])})"
  raise CheckpointError(
    f"{folder} holds {what}. From gs:// this project reads legacy T5X checkpoints (checkpoint_N/ with a msgpack "
    "`checkpoint` file and target.* zarr folders), or a model folder holding them."
  )


def _not_found(given: str, path: str) -> CheckpointError:
  hint = ""
  if "://" in given:
    hint = " Of remote paths, gs:// (Google Cloud Storage) is read; copy others to a local folder first."
  return CheckpointError(f"No checkpoint at {path}: the path does not exist.{hint}")


def _unknown_format(folder: str) -> CheckpointError:
  listing = sorted(os.listdir(folder))
  shown = ", ".join(listing[:15]) + (f", ... ({len(listing)} entries)" if len(listing) > 15 else "")
  return CheckpointError(
    f"{folder} is not a checkpoint this project can read: expected {_EXPECTED}. Found: {shown or 'an empty folder'}."
  )


def _read(fmt: Format, folder: str) -> CheckpointContents:
  if fmt is Format.HUGGING_FACE:
    return huggingface.read_folder(folder)
  if fmt is Format.T5X_ORBAX:
    return t5x.read_orbax(folder)
  return t5x.read_legacy(folder)


def _warn_config_differences(config: T5Config, declared: T5Config, source: str) -> None:
  fields = ("relative_attention_max_distance", "layer_norm_epsilon", "mlp_activations")
  differences = [
    f"{name}={getattr(config, name)} (file: {getattr(declared, name)})"
    for name in fields
    if getattr(config, name) != getattr(declared, name)
  ]
  if differences:
    logger.warning("The config passed differs from %s in %s; using the config passed.", source, ", ".join(differences))


def _choose_config(requested: str | T5Config | None, contents: CheckpointContents) -> tuple[T5Config, str]:
  """The config to load with (the user's, the file's, or inferred), checked against the shapes."""
  shapes = {path: lazy.shape for path, lazy in contents.arrays.items()}
  config, source = architecture.resolve_config(requested)
  if config is None and contents.config is None:
    config = architecture.infer_config(shapes, contents.location)
    return config, "the architecture inferred from the checkpoint's shapes"
  if config is None:
    config, source = contents.config, contents.config_source
  elif contents.config is not None:
    _warn_config_differences(config, contents.config, contents.config_source)
  architecture.check_config(config, shapes, source, contents.location)
  return config, source


def load_pretrained(
  path: str | os.PathLike, config: str | T5Config | None = None, dtype: Any = None, shardings: Any = None
) -> tuple[T5Config, dict[str, Any]]:
  """Loads a pretrained T5 backbone from a T5X (legacy or orbax) or Hugging Face checkpoint.

  Args:
    path: a T5X `checkpoint_N` folder, a T5X model folder (the largest
      `checkpoint_N` is read), either of them on `gs://` (legacy T5X), a
      Hugging Face folder (`config.json` plus safetensors, sharded safetensors,
      `flax_model.msgpack` or `pytorch_model.bin`), or a Hugging Face Hub id
      (`org/name`, `org/name@revision`).
    config: a named size (`"t5_1_1_base"`) or a T5Config. T5X checkpoints carry
      no config: without one it is inferred from the shapes (with a warning
      naming what shapes cannot tell). A Hugging Face folder's `config.json`
      is used when None. A config that does not match the shapes is refused.
    dtype: the dtype of the returned arrays; float32 when None. The returned
      config is not changed by it.
    shardings: None, or a tree shaped like `param_shapes(config)` of
      `jax.sharding.Sharding`s (e.g. `partitioning.shardings_for(...)["t5"]`).
      Then each array becomes a global `jax.Array` with that sharding, and
      this process reads only the blocks its devices hold: T5X checkpoints
      read just the zarr chunks of those blocks; other formats read one whole
      array at a time and keep its blocks. Every process calls it (multi-host).

  Returns:
    (config, params): params is a nested dict of numpy arrays (jax.Arrays with
    `shardings`) whose structure and shapes are exactly `param_shapes(config)`.
    The optimizer state of T5X checkpoints is not read.

  Raises:
    CheckpointError: for a path of no known format, an unreadable, truncated or
      corrupt file, missing or unexpected parameters, shape mismatches, an
      unsupported `feed_forward_proj`, or a config that does not match.
  """
  fmt, folder = detect_format(path)
  contents = _read(fmt, folder)
  config, source = _choose_config(config, contents)
  expected = expected_shapes(config)
  validate(contents, expected, source)  # Before reading any values.
  if shardings is None:
    params = materialize(contents, jnp.dtype(dtype or jnp.float32))
  else:
    flat_shardings = _flat_shardings(shardings, expected)
    params = materialize_sharded(contents, jnp.dtype(dtype or jnp.float32), flat_shardings)
  logger.info("Loaded %d parameters (%s) from %s.", len(contents.arrays), fmt.value, folder)
  return config, params


def pretrained_config(path: str | os.PathLike, config: str | T5Config | None = None) -> T5Config:
  """The config `load_pretrained(path, config)` would return, reading metadata only (no array values).

  What a run needs first to compute the shardings it then passes to
  `load_pretrained(..., shardings=...)`.

  Raises:
    CheckpointError: as `load_pretrained`, for everything but unreadable values.
  """
  fmt, folder = detect_format(path)
  return _choose_config(config, _read(fmt, folder))[0]


def _flat_shardings(shardings: Any, expected: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
  """`shardings` flattened to our paths, checked to name exactly the model's parameters with shardings."""
  import jax

  flat = flatten(shardings, is_leaf=lambda node: isinstance(node, jax.sharding.Sharding))
  missing, unexpected = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
  wrong = sorted(path for path, value in flat.items() if not isinstance(value, jax.sharding.Sharding))
  if missing or unexpected or wrong:
    raise CheckpointError(
      "`shardings` must be a tree of jax.sharding.Sharding shaped like the model's parameters "
      f"(param_shapes(config)); missing: {missing[:5]}, unexpected: {unexpected[:5]}, not a Sharding: {wrong[:5]}. "
      "Build it with partitioning.shardings_for(logical axes, mesh, rules)."
    )
  return flat


def save_hf_pretrained(path: str | os.PathLike, config: T5Config, params: Mapping[str, Any]) -> None:
  """Writes `params` as a Hugging Face T5 folder (`config.json` + `model.safetensors`).

  `transformers.T5ForConditionalGeneration.from_pretrained(path)` opens the
  result, and so does `load_pretrained(path)`. Arrays keep their dtype
  (float32, bfloat16 or float16; anything else is written as float32).

  Args:
    path: the folder to write (created if needed; existing files of the same
      names are replaced).
    config: the model's config; decoder-only models and MLP activations with no
      Hugging Face `feed_forward_proj` are refused.
    params: the nested parameter tree, exactly `param_shapes(config)`.

  Raises:
    CheckpointError: when `params` does not match `config` (listing what is
      missing, unexpected or of the wrong shape), or `config` cannot be
      expressed as a Hugging Face T5 config.
  """
  if not isinstance(config, T5Config):
    raise CheckpointError(f"save_hf_pretrained needs a T5Config, got {type(config).__name__}.")
  huggingface.hf_config_from(config, dtype="float32")  # Refuse unsupported configs before any work.
  flat = flatten(params)
  contents = CheckpointContents(
    arrays={name: in_memory(value, name) for name, value in flat.items()},
    unrecognized=[],
    location="save_hf_pretrained",
  )
  hint = "Pass the parameters of this config (as load_pretrained or init_params return them), or the matching config."
  validate(contents, expected_shapes(config), "the config passed", hint)
  huggingface.write_folder(os.fspath(path), config, flat)
