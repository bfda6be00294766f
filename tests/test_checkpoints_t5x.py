"""T5X checkpoints: the real legacy reference checkpoint, and orbax checkpoints built here."""

from __future__ import annotations

import gzip
import json
import logging
import math
import pathlib
import shutil

import msgpack
import numpy as np
import pytest

from prompt_tuning.checkpoints import Format, detect_format, load_pretrained
from prompt_tuning.checkpoints.param_tree import expected_shapes, flatten, unflatten
from prompt_tuning.models.configs import get_config


@pytest.fixture
def model_dir(reference_dir) -> pathlib.Path:
  """The reference T5X model folder (`reference_dir` skips when ../shared is absent)."""
  return reference_dir / "t5x_t5_1_1_tiny"


@pytest.fixture
def step_dir(model_dir) -> pathlib.Path:
  return model_dir / "checkpoint_3"


# ---------------------------------------------------------------------------
# An independent reader of the reference files: plain msgpack + gzip + numpy.


def _decode_flax_array(code: int, data: bytes):
  assert code == 1, f"unexpected msgpack extension {code}"
  shape, dtype, buffer = msgpack.unpackb(data)
  return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)


def _read_zarr_by_hand(folder: pathlib.Path) -> np.ndarray:
  """Reads a zarr v2 array with gzip chunks, without tensorstore."""
  meta = json.loads((folder / ".zarray").read_text())
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C" and meta["filters"] is None
  shape, chunks, dtype = meta["shape"], meta["chunks"], np.dtype(meta["dtype"])
  out = np.zeros(shape, dtype)
  grid = [math.ceil(n / c) for n, c in zip(shape, chunks)]
  for index in np.ndindex(*grid):
    chunk = np.frombuffer(gzip.decompress((folder / ".".join(map(str, index))).read_bytes()), dtype).reshape(chunks)
    region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
    out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
  return out


def _reference_target_by_hand(step_dir: pathlib.Path) -> dict[str, np.ndarray]:
  raw = (step_dir / "checkpoint").read_bytes()
  tree = msgpack.unpackb(raw, ext_hook=lambda code, data: _decode_flax_array(code, data))
  target = tree["optimizer"]["target"]
  flat = flatten(target, is_leaf=lambda node: "driver" in node)
  return {
    path: _read_zarr_by_hand(step_dir / leaf["kvstore"]["path"]) if isinstance(leaf, dict) else leaf
    for path, leaf in flat.items()
  }


# ---------------------------------------------------------------------------
# Legacy format


def test_reference_checkpoint_equals_the_files_read_by_hand(step_dir):
  config, params = load_pretrained(step_dir, config="t5_1_1_tiny")
  assert config == get_config("t5_1_1_tiny")
  expected = _reference_target_by_hand(step_dir)
  loaded = flatten(params)
  assert sorted(loaded) == sorted(expected)
  assert len(expected) == 52
  for path, value in expected.items():
    assert loaded[path].dtype == np.float32, path
    np.testing.assert_array_equal(loaded[path], value, err_msg=path)
  # Both kinds of storage were exercised: inline arrays and zarr folders.
  assert "encoder/relpos_bias/rel_embedding" in expected and "token_embedder/embedding" in expected
  assert loaded["token_embedder/embedding"].shape == (32128, 4)
  assert np.abs(loaded["token_embedder/embedding"]).sum() > 0


def test_reference_model_dir_picks_the_latest_step(tmp_path, step_dir):
  copy = tmp_path / "model"
  shutil.copytree(step_dir, copy / "checkpoint_3")
  (copy / "checkpoint_1").mkdir()  # An older (here: empty) step must not be chosen.
  (copy / "checkpoint_10.tmp-123").mkdir()  # An unfinished save is not a step.
  assert detect_format(copy) == (Format.T5X_LEGACY, str(copy / "checkpoint_3"))
  _, from_parent = load_pretrained(copy, config="t5_1_1_tiny")
  _, from_step = load_pretrained(step_dir, config="t5_1_1_tiny")
  _, from_file = load_pretrained(step_dir / "checkpoint", config="t5_1_1_tiny")
  for path, value in flatten(from_step).items():
    np.testing.assert_array_equal(flatten(from_parent)[path], value)
    np.testing.assert_array_equal(flatten(from_file)[path], value)


def test_reference_config_inferred_from_shapes_with_a_warning(caplog, model_dir):
  with caplog.at_level(logging.WARNING):
    config, params = load_pretrained(model_dir)
  named = get_config("t5_1_1_tiny")
  # Everything the shapes tell matches the named size; the rest are T5 defaults.
  assert config.replace(relative_attention_max_distance=8, dropout_rate=0.0) == named
  assert config.relative_attention_max_distance == 128
  warning = caplog.text
  assert "relative_attention_max_distance" in warning and "layer_norm_epsilon" in warning
  assert "dropout_rate" in warning and "t5_1_1_tiny" in warning
  assert flatten(params)["decoder/logits_dense/kernel"].shape == (4, 32128)


def test_reference_dtype_argument(step_dir):
  import jax.numpy as jnp

  _, params = load_pretrained(step_dir, config="t5_1_1_tiny", dtype="bfloat16")
  flat32 = flatten(load_pretrained(step_dir, config="t5_1_1_tiny")[1])
  for path, value in flatten(params).items():
    assert value.dtype == jnp.bfloat16, path
    np.testing.assert_array_equal(value, flat32[path].astype(jnp.bfloat16))


def test_reference_forward_pass_is_finite(step_dir):
  t5 = pytest.importorskip("prompt_tuning.models.t5")
  import jax.numpy as jnp

  config, params = load_pretrained(step_dir, config="t5_1_1_tiny")
  encoder_tokens = jnp.array([[5, 9, 2, 1, 0, 0], [7, 1, 0, 0, 0, 0]], jnp.int32)  # [B, Te]
  decoder_tokens = jnp.array([[0, 3, 4, 8], [0, 6, 1, 0]], jnp.int32)  # [B, Td]
  logits = t5.T5(config).apply({"params": params}, encoder_tokens, decoder_tokens)
  assert logits.shape == (2, 4, 32128)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


# ---------------------------------------------------------------------------
# Orbax format


def _random_params(config, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return unflatten({p: rng.normal(size=s).astype(np.float32) for p, s in expected_shapes(config).items()})


def _optimizer_state(params) -> dict:
  import jax

  return {
    "step": np.int32(7),
    "param_states": jax.tree.map(lambda x: {"v": np.full(x.shape, 3.0, np.float32), "v_row": np.zeros(1)}, params),
  }


@pytest.mark.parametrize("checkpointer", ["pytree", "standard"])
@pytest.mark.parametrize("name", ["t5_1_0_tiny", "decoder_only_tiny"])
def test_orbax_round_trip(tmp_path, checkpointer, name):
  import orbax.checkpoint as ocp

  config = get_config(name)
  params = _random_params(config)
  step_dir = tmp_path / "model" / "checkpoint_20"
  tree = {"target": params, "state": _optimizer_state(params)}
  if checkpointer == "pytree":
    with ocp.PyTreeCheckpointer() as ckptr:
      ckptr.save(step_dir, tree)
  else:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(step_dir, tree)
  assert detect_format(tmp_path / "model")[0] == Format.T5X_ORBAX
  loaded_config, loaded = load_pretrained(tmp_path / "model", config=name)
  assert loaded_config == config
  inferred_config, inferred = load_pretrained(step_dir)
  assert inferred_config.replace(relative_attention_max_distance=16, dropout_rate=0.0) == config
  expected = flatten(params)
  assert sorted(flatten(loaded)) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(flatten(loaded)[path], value, err_msg=path)
    np.testing.assert_array_equal(flatten(inferred)[path], value, err_msg=path)


def test_orbax_item_subfolder_and_optimizer_key(tmp_path):
  """T5X's orbax manager keeps the tree in an item folder; older trees nest it under 'optimizer'."""
  import orbax.checkpoint as ocp

  config = get_config("t5_1_0_tiny")
  params = _random_params(config, seed=1)
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(
      tmp_path / "checkpoint_5" / "state", {"optimizer": {"target": params, "state": _optimizer_state(params)}}
    )
  fmt, folder = detect_format(tmp_path)
  assert (fmt, folder) == (Format.T5X_ORBAX, str(tmp_path / "checkpoint_5" / "state"))
  _, loaded = load_pretrained(tmp_path, config=config, dtype=np.float16)
  for path, value in flatten(params).items():
    assert flatten(loaded)[path].dtype == np.float16
    np.testing.assert_array_equal(flatten(loaded)[path], value.astype(np.float16))


@pytest.mark.parametrize("reference", ["spec", "placeholder"])
def test_legacy_layout_written_here(tmp_path, reference):
  """The legacy layout with a top-level 'target', large arrays as zarr folders named by tensorstore specs or by
  early orbax's "PLACEHOLDER://" strings."""
  import tensorstore as ts
  from flax import serialization

  config = get_config("t5_1_0_tiny")
  params = _random_params(config, seed=2)
  step_dir = tmp_path / "checkpoint_9"
  step_dir.mkdir()
  target = {}
  for path, value in flatten(params).items():
    if value.ndim < 2:
      target[path] = value  # Inline.
      continue
    name = "target." + path.replace("/", ".")
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(step_dir / name)}}
    ts.open(spec, create=True, dtype=ts.float32, shape=value.shape).result().write(value).result()
    relative = {
      "driver": "zarr",
      "kvstore": {"driver": "gfile", "path": name},
      "metadata": {"shape": list(value.shape)},
    }
    target[path] = relative if reference == "spec" else f"PLACEHOLDER://{name}"
  tree = {"target": unflatten(target), "state": {"step": np.int32(9)}}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(tree))
  assert detect_format(tmp_path)[0] == Format.T5X_LEGACY
  loaded_config, loaded = load_pretrained(tmp_path, config="t5_1_0_tiny")
  assert loaded_config == config
  for path, value in flatten(params).items():
    np.testing.assert_array_equal(flatten(loaded)[path], value, err_msg=path)


def test_orbax_checkpoint_manager_layout(tmp_path):
  """orbax's CheckpointManager writes `<dir>/<step>/default/`; the latest step is read."""
  import orbax.checkpoint as ocp

  config = get_config("t5_1_0_tiny")
  with ocp.CheckpointManager(tmp_path) as manager:
    for step in (3, 12):
      params = _random_params(config, seed=step)
      manager.save(step, args=ocp.args.StandardSave({"target": params, "state": _optimizer_state(params)}))
    manager.wait_until_finished()
  assert detect_format(tmp_path)[0] == Format.T5X_ORBAX
  _, loaded = load_pretrained(tmp_path, config=config)
  for path, value in flatten(params).items():
    np.testing.assert_array_equal(flatten(loaded)[path], value, err_msg=path)
