"""Fault probes of 2026-12-06 (issue #31, item 4) on what a run reads but did not write: backbones in the Hugging
Face cache (probes 10, 21), a damaged T5X backbone (probe 11) and a .npy header bomb (probe 26). The probe's number
in ../shared/faults/probes-2026-12-06.md is in each test's comment.

The cache is laid out as huggingface_hub's `snapshot_download` leaves it: `models--org--name/blobs/<sha256>` and
`snapshots/<revision>/<file>` links to `../../blobs/<sha256>`, built here from the demo model (no network).
"""

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tiny_task
from cli_runs import run_cli

from prompt_tuning import prompts, train
from prompt_tuning.checkpoints import CheckpointError, huggingface, load_pretrained, peft
from prompt_tuning.checkpoints.param_tree import flatten

DEMO_T5 = Path(__file__).resolve().parents[1] / "prompt_tuning" / "assets" / "demo_t5"


def _config(model_dir, **overrides) -> train.RunConfig:
  """The tiny run's RunConfig (tiny_task.run_config), keeping its 2 newest checkpoints."""
  return tiny_task.run_config(model_dir, **{"keep_checkpoints": 2, **overrides})


pytestmark = pytest.mark.usefixtures("clean_gin")


def _into_cache(repo: Path, files: dict[str, Path], revision: str = "rev") -> Path:
  """Moves `files` ({name in the snapshot: file}) into a hub cache repository; returns the snapshot folder."""
  snapshot = repo / "snapshots" / revision
  (repo / "blobs").mkdir(parents=True, exist_ok=True)
  snapshot.mkdir(parents=True, exist_ok=True)
  for name, file in files.items():
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    shutil.move(file, repo / "blobs" / digest)
    (snapshot / name).symlink_to(f"../../blobs/{digest}")
  return snapshot


def _sharded_demo_in_cache(tmp_path: Path) -> Path:
  from safetensors.numpy import load_file, save_file

  tensors = load_file(str(DEMO_T5 / "model.safetensors"))
  names = sorted(tensors)
  files, weight_map = {}, {}
  for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
    name = f"model-0000{i}-of-00002.safetensors"
    save_file({n: tensors[n] for n in part}, str(tmp_path / name))
    files[name] = tmp_path / name
    weight_map.update(dict.fromkeys(part, name))
  (tmp_path / "index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  files["model.safetensors.index.json"] = tmp_path / "index.json"
  shutil.copy(DEMO_T5 / "config.json", tmp_path / "config.json")
  files["config.json"] = tmp_path / "config.json"
  return _into_cache(tmp_path / "hub" / "models--demo--t5", files)


def test_a_sharded_model_in_the_hub_cache_is_read(tmp_path):
  # Probe 21: "... names 'model-00001-of-00002.safetensors', which resolves to .../blobs/0c86..., outside ...
  # The file was altered or crafted" for every sharded hub model.
  snapshot = _sharded_demo_in_cache(tmp_path)
  _, cached = load_pretrained(snapshot)
  _, plain = load_pretrained(DEMO_T5)
  assert jax_tree_equal(cached, plain)


def jax_tree_equal(a, b) -> bool:
  import jax

  same = jax.tree.map(lambda x, y: x.shape == y.shape and np.array_equal(x, y), a, b)
  return jax.tree.structure(a) == jax.tree.structure(b) and all(jax.tree.leaves(same))


def test_a_peft_adapter_in_the_hub_cache_is_read(tmp_path):
  # Probe 21, its second case: adapter_model.safetensors is a link to a blob.
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
  exported = tmp_path / "exported"
  peft.export_peft_adapter(prompt, exported)
  snapshot = _into_cache(tmp_path / "hub" / "models--user--adapter", {p.name: p for p in exported.iterdir()})
  np.testing.assert_array_equal(peft.load_peft_adapter(snapshot), prompt)
  np.testing.assert_array_equal(prompts.load_prompt_file(snapshot), prompt)


def test_a_cache_snapshot_still_refuses_names_that_climb_out_and_links_that_leave_the_repository(tmp_path):
  snapshot = _sharded_demo_in_cache(tmp_path)
  index_file = snapshot / "model.safetensors.index.json"
  index = json.loads(index_file.read_text())
  blob = (snapshot / "model-00001-of-00002.safetensors").resolve()
  # A name that climbs out with '..' is refused even where it stays in the cache.
  climbing = {
    name: f"../../blobs/{blob.name}" if shard.startswith("model-00001") else shard
    for name, shard in index["weight_map"].items()
  }
  index_file.unlink()
  index_file.write_text(json.dumps({"weight_map": climbing}))
  with pytest.raises(CheckpointError, match=r"names '\.\./\.\./blobs/.*outside"):
    huggingface.read_weights(str(snapshot))
  # A link that leaves the cache repository is refused.
  index_file.write_text(json.dumps(index))
  outside = tmp_path / "elsewhere.safetensors"
  shutil.copy(blob, outside)
  (snapshot / "model-00001-of-00002.safetensors").unlink()
  (snapshot / "model-00001-of-00002.safetensors").symlink_to(outside)
  with pytest.raises(CheckpointError, match=rf"resolves to {outside}, outside"):
    huggingface.read_weights(str(snapshot))


def test_a_bit_flipped_blob_in_the_hub_cache_is_refused_by_its_sha256(tmp_path):
  # Probe 10: a flipped safetensors backbone trained silently (the format has no checksum). The cache names each
  # weight file by its sha256, which is checked (a copy of a folder we wrote is checked by its SHA256SUMS, below).
  shutil.copy(DEMO_T5 / "model.safetensors", tmp_path / "model.safetensors")
  shutil.copy(DEMO_T5 / "config.json", tmp_path / "config.json")
  snapshot = _into_cache(
    tmp_path / "hub" / "models--demo--t5",
    {"model.safetensors": tmp_path / "model.safetensors", "config.json": tmp_path / "config.json"},
  )
  blob = (snapshot / "model.safetensors").resolve()
  data = bytearray(blob.read_bytes())
  header = struct.unpack("<Q", data[:8])[0]
  data[8 + header + 1000] ^= 0x01
  blob.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match=rf"model.safetensors is damaged: its bytes \({blob}\) do not match the"):
    load_pretrained(snapshot)


def test_a_bit_flipped_copy_of_a_folder_we_wrote_is_refused_by_its_sha256sums(tmp_path, capfd):
  # Probe 10 as reproduced: a copy of the shipped demo model with flipped bytes trained silently. Every folder this
  # project writes (export, the shipped demo models) carries SHA256SUMS, checked at load; training stops before its
  # first step, naming the file and what to do.
  folder = tmp_path / "h5"
  shutil.copytree(DEMO_T5, folder)
  assert huggingface.listed_sums(str(folder)) == {
    "model.safetensors": hashlib.sha256((DEMO_T5 / "model.safetensors").read_bytes()).hexdigest()
  }
  data = bytearray((folder / "model.safetensors").read_bytes())
  header = struct.unpack("<Q", data[:8])[0]
  data[8 + header + 1000] ^= 0x01
  (folder / "model.safetensors").write_bytes(bytes(data))
  args = [
    "train",
    "--gin_file=demo/prompt.gin",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=4",
    f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'",
    f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
  ]
  out = run_cli(capfd, *args)
  assert out.returncode == 1
  assert f"{folder / 'model.safetensors'} is damaged: its sha256" in out.stderr
  assert "SHA256SUMS" in out.stderr and not (tmp_path / "run" / "checkpoints").exists()
  # A folder written by export carries the sums too; one without them (saved by transformers) still loads.
  (folder / "model.safetensors").write_bytes((DEMO_T5 / "model.safetensors").read_bytes())
  (folder / huggingface.CHECKSUMS_FILE).unlink()
  config, params = load_pretrained(folder)
  huggingface.write_folder(str(tmp_path / "written"), config, flatten(params))
  assert huggingface.listed_sums(str(tmp_path / "written")).keys() == {"model.safetensors"}


def test_a_t5x_backbone_with_nan_weights_is_blamed_not_the_learning_rate(tmp_path):
  # Probe 11: "loss is nan at step 1 ... The last good checkpoint (step None) ... Lower the learning rate".
  backbone = tmp_path / "checkpoint_3"
  shutil.copytree(tiny_task.T5X_TINY, backbone)
  chunk = backbone / "target.decoder.layers_0.mlp.wi_0.kernel" / "0.0"
  values = np.frombuffer(gzip.decompress(chunk.read_bytes()), "<f4").copy()
  values[:] = np.nan
  chunk.write_bytes(gzip.compress(values.tobytes()))
  with pytest.raises(CheckpointError, match=r"holds NaN or infinite values in:\n  decoder/layers_0/mlp/wi_0/kernel"):
    train.train(_config(tmp_path / "run", initial_checkpoint_path=str(backbone)), num_train_steps=2)
  assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def _npy_bomb(path: Path) -> Path:
  """128 bytes whose header claims a float32 array [10**9, 256] (954 GiB)."""
  header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 256), }"
  header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
  path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
  return path


def test_a_npy_header_bomb_is_refused_before_anything_is_allocated(tmp_path, capfd):
  # Probe 26: "MemoryError: Unable to allocate 954. GiB", naming no file (export and infer read prompts alike).
  bomb = _npy_bomb(tmp_path / "bomb.npy")
  with pytest.raises(CheckpointError, match=r"bomb.npy claims an array of shape \(1000000000, 256\).*holds 0 bytes"):
    prompts.load_prompt_file(bomb)
  result = run_cli(capfd, "export", bomb, tmp_path / "out.npy", "--format", "npy")
  assert result.returncode == 1
  assert f"error: CheckpointError: {bomb} claims an array" in result.stderr
  assert not (tmp_path / "out.npy").exists()


def test_a_npy_file_cut_short_is_refused_naming_it(tmp_path):
  path = tmp_path / "prompt.npy"
  np.save(path, np.ones((20, 8), np.float32))
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(CheckpointError, match=r"prompt.npy claims an array of shape \(20, 8\).*truncated or crafted"):
    prompts.load_prompt_file(path)
