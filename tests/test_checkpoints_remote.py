"""Checkpoints from gs:// (a real GCS emulator process on 127.0.0.1: conftest's `gcs_emulator`) and from Hugging
Face Hub ids (offline cache)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning.checkpoints import (
  CheckpointError,
  Format,
  detect_format,
  hub,
  load_pretrained,
  save_hf_pretrained,
  t5x,
)
from prompt_tuning.checkpoints.param_tree import flatten
from prompt_tuning.models.configs import get_config


def _upload(folder: Path, bucket_path: str) -> None:
  """Copies every file under `folder` to `bucket_path` through tensorstore's gcs driver (as gsutil cp -r would)."""
  import tensorstore as ts

  bucket, _, prefix = bucket_path[len("gs://") :].partition("/")
  store = ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()
  writes = [
    store.write(f"{prefix}/{file.relative_to(folder)}", file.read_bytes())
    for file in sorted(folder.rglob("*"))
    if file.is_file()
  ]
  for write in writes:
    write.result()


@pytest.fixture(scope="module")
def uploaded(gcs_emulator, reference_dir):
  """The reference T5X checkpoint in the emulator's bucket, as gs://bucket/t5x_tiny/checkpoint_3."""
  local = reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3"
  _upload(local, f"{gcs_emulator}/t5x_tiny/checkpoint_3")
  return local, f"{gcs_emulator}/t5x_tiny"


def _assert_same_params(got, expected):
  got, expected = flatten(got), flatten(expected)
  assert sorted(got) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=path)


def test_gcs_checkpoint_reads_back_equal_to_the_local_one(uploaded):
  local, model_dir = uploaded
  local_config, local_params = load_pretrained(local, config="t5_1_1_tiny")
  assert detect_format(f"{model_dir}/checkpoint_3") == (Format.T5X_LEGACY, f"{model_dir}/checkpoint_3")
  config, params = load_pretrained(f"{model_dir}/checkpoint_3", config="t5_1_1_tiny")
  assert config == local_config
  _assert_same_params(params, local_params)


def test_gcs_model_folder_and_file_paths(uploaded):
  """A gs:// model folder reads its latest checkpoint_N; a path to the msgpack file reads its folder."""
  _, model_dir = uploaded
  assert detect_format(model_dir) == (Format.T5X_LEGACY, f"{model_dir}/checkpoint_3")
  assert detect_format(f"{model_dir}/checkpoint_3/checkpoint") == (Format.T5X_LEGACY, f"{model_dir}/checkpoint_3")
  assert detect_format(f"{model_dir}/checkpoint_3/") == (Format.T5X_LEGACY, f"{model_dir}/checkpoint_3")


def test_gcs_errors_say_what_is_there(gcs_emulator, tmp_path):
  with pytest.raises(CheckpointError, match="nothing is stored under that path"):
    load_pretrained(f"{gcs_emulator}/no/such/checkpoint_1")
  hf = tmp_path / "hf"
  save_hf_pretrained(hf, get_config("t5_1_0_tiny"), _tiny_params("t5_1_0_tiny"))
  _upload(hf, f"{gcs_emulator}/hf_model")
  with pytest.raises(CheckpointError, match="a Hugging Face folder; load it by its hub id"):
    load_pretrained(f"{gcs_emulator}/hf_model")


def test_gcs_checkpoint_with_a_missing_chunk_is_refused(gcs_emulator, reference_dir, tmp_path):
  local = tmp_path / "checkpoint_3"
  shutil.copytree(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3", local)
  os.chmod(local / "target.token_embedder.embedding", 0o755)
  (local / "target.token_embedder.embedding" / "7.0").unlink()
  _upload(local, f"{gcs_emulator}/truncated/checkpoint_3")
  with pytest.raises(
    CheckpointError, match="(?s)chunk {7, 0} .*embedding/7.0 is missing.*copy the whole checkpoint folder"
  ):
    load_pretrained(f"{gcs_emulator}/truncated/checkpoint_3", config="t5_1_1_tiny")


def test_t5x_reads_only_the_chunks_of_a_block(reference_dir, tmp_path):
  """Reading a block touches only the zarr chunks it overlaps: with the last chunk gone, the first rows still read."""
  local = tmp_path / "checkpoint_3"
  shutil.copytree(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3", local)
  os.chmod(local / "target.token_embedder.embedding", 0o755)
  (local / "target.token_embedder.embedding" / "7.0").unlink()  # Rows 28672..32127 (chunks of 4096 rows).
  embedding = t5x.read_legacy(str(local)).arrays["token_embedder/embedding"]
  _, full = load_pretrained(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3", config="t5_1_1_tiny")
  block = embedding.block((slice(0, 8032), slice(0, 4)))  # [8032, 4]: a quarter of the vocabulary.
  np.testing.assert_array_equal(block, full["token_embedder"]["embedding"][:8032])
  with pytest.raises(CheckpointError, match="missing or corrupt"):
    embedding.read()


# ---------------------------------------------------------------------------
# Hugging Face Hub ids, from a hub cache laid out here, offline.


def _tiny_params(size: str, seed: int = 0):
  import jax

  import prompt_tuning as pt

  return jax.device_get(pt.init_params(get_config(size), jax.random.key(seed)))


def _hub_cache(root: Path, repo_id: str, commits: dict[str, Path], main: str) -> Path:
  """Lays out huggingface_hub's cache: models--org--name/{blobs,snapshots/<sha>/...,refs/main}."""
  repo = root / f"models--{repo_id.replace('/', '--')}"
  for sha, folder in commits.items():
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
      blob = repo / "blobs" / f"{sha}-{file.name}"
      blob.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(file, blob)
      (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(main)
  return root


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
  """Two commits of `test-org/tiny-t5` in a hub cache; HF_HUB_OFFLINE=1 and HF_HUB_CACHE point at it."""
  config = get_config("t5_1_0_tiny")
  commits, params = {}, {}
  for seed, sha in enumerate(("a" * 40, "b" * 40)):
    params[sha] = _tiny_params("t5_1_0_tiny", seed)
    commits[sha] = tmp_path / f"written_{seed}"
    save_hf_pretrained(commits[sha], config, params[sha])
  cache = _hub_cache(tmp_path / "hub", "test-org/tiny-t5", commits, main="b" * 40)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.chdir(tmp_path)
  return config, params


def test_hub_id_resolves_from_the_cache_offline(offline_hub):
  config, params = offline_hub
  fmt, folder = detect_format("test-org/tiny-t5")
  assert fmt is Format.HUGGING_FACE and folder.endswith("snapshots/" + "b" * 40)
  loaded_config, loaded = load_pretrained("test-org/tiny-t5")
  assert loaded_config == config
  _assert_same_params(loaded, params["b" * 40])


def test_hub_id_with_a_revision(offline_hub):
  _, params = offline_hub
  _, loaded = load_pretrained("test-org/tiny-t5@" + "a" * 40)
  _assert_same_params(loaded, params["a" * 40])
  with pytest.raises(CheckpointError, match="not in the hub cache"):
    load_pretrained("test-org/tiny-t5@" + "c" * 40)


def test_hub_id_not_in_the_cache_offline(offline_hub):
  with pytest.raises(CheckpointError, match="test-org/other is not in the hub cache at .*unset HF_HUB_OFFLINE"):
    load_pretrained("test-org/other")


def test_a_local_folder_shaped_like_a_hub_id_is_read_locally(offline_hub, tmp_path):
  """`org/name` is a hub id only when no such local path exists."""
  _, params = offline_hub
  local = tmp_path / "test-org" / "tiny-t5"
  save_hf_pretrained(local, get_config("t5_1_0_tiny"), params["a" * 40])
  assert hub.parse_hub_id("test-org/tiny-t5") is None
  _, loaded = load_pretrained("test-org/tiny-t5")
  _assert_same_params(loaded, params["a" * 40])


def test_weights_fetched_from_a_repository_listing():
  """Only config.json and the preferred weight format are downloaded (flan-t5-xl holds three formats)."""
  listing = [
    "config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model.bin.index.json",
    "flax_model-00001-of-00002.msgpack",
    "tf_model.h5",
  ]
  assert hub.weight_patterns(listing) == ["config.json", "model*.safetensors", "model.safetensors.index.json"]
  assert hub.weight_patterns(["config.json", "pytorch_model.bin", "flax_model.msgpack"]) == [
    "config.json",
    "flax_model.msgpack",
  ]
  with pytest.raises(CheckpointError, match="holds none of"):
    hub.weight_patterns(["config.json", "tf_model.h5"])
  assert json.dumps(hub.parse_hub_id("google/flan-t5-xl@refs/pr/3")) == '["google/flan-t5-xl", "refs/pr/3"]'
