"""Bad input raises CheckpointError with a message that says what is wrong; nothing is half-loaded."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

from prompt_tuning.checkpoints import CheckpointError, load_pretrained, save_hf_pretrained
from prompt_tuning.checkpoints.param_tree import expected_shapes, unflatten
from prompt_tuning.models.configs import get_config

# After a failed orbax restore, tensorstore threads still post callbacks to orbax's closed asyncio loop; Python
# reports them as "unraisable" on whichever test runs next. They are orbax's noise, not a failure of these tests.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


HF_CONFIG = {
  "model_type": "t5",
  "vocab_size": 64,
  "d_model": 16,
  "d_kv": 8,
  "num_heads": 2,
  "d_ff": 32,
  "num_layers": 2,
  "num_decoder_layers": 2,
  "relative_attention_num_buckets": 8,
  "feed_forward_proj": "relu",
  "tie_word_embeddings": True,
}


def test_error_type_is_a_value_error():
  assert issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------
# A Hugging Face folder written with our writer (its round trip is tested in test_checkpoints_hf.py), then damaged.


@pytest.fixture
def hf_folder(tmp_path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  config = get_config("t5_1_0_tiny", vocab_size=64)
  params = unflatten({p: rng.normal(size=s).astype(np.float32) for p, s in expected_shapes(config).items()})
  folder = tmp_path / "hf"
  save_hf_pretrained(folder, config, params)
  return folder


def _tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  return load_file(folder / "model.safetensors")


def _rewrite(folder: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file

  save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
  (folder / "SHA256SUMS").unlink()  # weights changed by another tool, which writes no sums (as transformers)


def _edit_config(folder: pathlib.Path, **changes) -> None:
  config = json.loads((folder / "config.json").read_text())
  config.update(changes)
  (folder / "config.json").write_text(json.dumps(config))


def test_missing_parameters_are_listed(hf_folder):
  tensors = _tensors(hf_folder)
  del tensors["decoder.block.1.layer.1.EncDecAttention.k.weight"]
  del tensors["encoder.final_layer_norm.weight"]
  _rewrite(hf_folder, tensors)
  with pytest.raises(CheckpointError, match="2 missing parameter") as error:
    load_pretrained(hf_folder)
  assert "decoder.block.1.layer.1.EncDecAttention.k.weight" in str(error.value)
  assert "encoder.final_layer_norm.weight" in str(error.value)


def test_unexpected_parameters_are_listed(hf_folder):
  tensors = _tensors(hf_folder)
  tensors["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.zeros((2, 2), np.float32)  # No such name.
  tensors["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"] = np.zeros((32, 16), np.float32)  # Not in T5 1.0.
  _rewrite(hf_folder, tensors)
  with pytest.raises(CheckpointError, match="2 unexpected parameter") as error:
    load_pretrained(hf_folder)
  assert "SelfAttention.extra.weight" in str(error.value)
  assert "encoder.block.1.layer.1.DenseReluDense.wi_0.weight" in str(error.value)


def test_extra_layers_contradict_the_config(hf_folder):
  tensors = _tensors(hf_folder)
  tensors["decoder.block.5.layer.0.layer_norm.weight"] = np.zeros((16,), np.float32)
  _rewrite(hf_folder, tensors)
  with pytest.raises(CheckpointError, match="config.json does not match") as error:
    load_pretrained(hf_folder)
  assert "num_decoder_layers: 2 in" in str(error.value) and "6 in the checkpoint" in str(error.value)


def test_shape_mismatch_names_path_expected_and_found(hf_folder):
  tensors = _tensors(hf_folder)
  tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((16, 31), np.float32)  # [out, in]
  _rewrite(hf_folder, tensors)
  with pytest.raises(CheckpointError, match="shape mismatch") as error:
    load_pretrained(hf_folder)
  # Quoted as the file stores it (PyTorch [out, in]).
  assert "encoder.block.1.layer.1.DenseReluDense.wo.weight: expected [16, 32], found [16, 31]" in str(error.value)


def test_config_json_that_contradicts_the_weights(hf_folder):
  _edit_config(hf_folder, d_ff=64)
  with pytest.raises(CheckpointError, match="config.json does not match") as error:
    load_pretrained(hf_folder)
  assert "mlp_dim: 64 in" in str(error.value) and "32 in the checkpoint" in str(error.value)


def test_unknown_feed_forward_proj(hf_folder):
  _edit_config(hf_folder, feed_forward_proj="gated-swishy")
  with pytest.raises(CheckpointError, match="feed_forward_proj 'gated-swishy'"):
    load_pretrained(hf_folder)


def test_other_model_type(hf_folder):
  _edit_config(hf_folder, model_type="umt5")
  with pytest.raises(CheckpointError, match="'umt5' model"):
    load_pretrained(hf_folder)


def test_truncated_safetensors(hf_folder):
  file = hf_folder / "model.safetensors"
  file.write_bytes(file.read_bytes()[:-100])
  with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
    load_pretrained(hf_folder)
  assert "model.safetensors" in str(error.value)


def test_corrupt_config_json(hf_folder):
  (hf_folder / "config.json").write_text('{"model_type": "t5", "d_mod')
  with pytest.raises(CheckpointError, match="not valid JSON"):
    load_pretrained(hf_folder)


def test_missing_shard(hf_folder):
  tensors = _tensors(hf_folder)
  (hf_folder / "model.safetensors").unlink()
  index = {"metadata": {}, "weight_map": {name: "model-00001-of-00002.safetensors" for name in tensors}}
  index["weight_map"]["shared.weight"] = "model-00002-of-00002.safetensors"
  (hf_folder / "model.safetensors.index.json").write_text(json.dumps(index))
  from safetensors.numpy import save_file

  save_file({k: v for k, v in tensors.items() if k != "shared.weight"}, hf_folder / "model-00001-of-00002.safetensors")
  with pytest.raises(CheckpointError, match="not in") as error:
    load_pretrained(hf_folder)
  assert "model-00002-of-00002.safetensors" in str(error.value)


def test_corrupt_flax_msgpack(hf_folder):
  (hf_folder / "model.safetensors").unlink()
  (hf_folder / "flax_model.msgpack").write_bytes(b"\x85\xa6shared\x81\xa9embedding\xc7\x30\x01garbage")
  with pytest.raises(CheckpointError, match="flax_model.msgpack is not a readable msgpack file"):
    load_pretrained(hf_folder)


def test_config_without_weights_lists_the_expected_files(hf_folder):
  (hf_folder / "model.safetensors").unlink()
  (hf_folder / "tf_model.h5").write_bytes(b"")
  with pytest.raises(CheckpointError, match="no weights") as error:
    load_pretrained(hf_folder)
  message = str(error.value)
  assert "model.safetensors" in message and "pytorch_model.bin" in message and "flax_model.msgpack" in message
  assert "tf_model.h5" in message and "safe_serialization=True" in message


# ---------------------------------------------------------------------------
# pytorch_model.bin: only torch.load(weights_only=True), only when torch is there.


class NotATensor:
  """Anything but tensors must be refused by torch.load(weights_only=True)."""

  def __reduce__(self):
    return (print, ("this must never run",))


def test_pickle_with_objects_is_refused(hf_folder):
  torch = pytest.importorskip("torch")
  (hf_folder / "model.safetensors").unlink()
  torch.save({"shared.weight": torch.zeros(2, 2), "payload": NotATensor()}, hf_folder / "pytorch_model.bin")
  with pytest.raises(CheckpointError, match="objects other than tensors, which are never unpickled") as error:
    load_pretrained(hf_folder)
  assert "print" in str(error.value) and "safe_serialization=True" in str(error.value)


def test_pytorch_bin_without_torch_says_how_to_convert(hf_folder, monkeypatch):
  (hf_folder / "model.safetensors").unlink()
  (hf_folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(CheckpointError, match="needs PyTorch") as error:
    load_pretrained(hf_folder)
  assert "save_pretrained" in str(error.value) and "safe_serialization=True" in str(error.value)


def test_truncated_pytorch_bin(hf_folder):
  torch = pytest.importorskip("torch")
  (hf_folder / "model.safetensors").unlink()
  file = hf_folder / "pytorch_model.bin"
  torch.save({"shared.weight": torch.zeros(64, 16)}, file)
  file.write_bytes(file.read_bytes()[:200])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    load_pretrained(hf_folder)


# ---------------------------------------------------------------------------
# Paths


def test_path_that_does_not_exist(tmp_path, monkeypatch):
  with pytest.raises(CheckpointError, match="does not exist"):
    load_pretrained(tmp_path / "nowhere")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  with pytest.raises(CheckpointError, match="not in the hub cache at .*HF_HUB_OFFLINE=1"):
    load_pretrained("google/t5-v1_1-base")
  with pytest.raises(CheckpointError, match="gs:// .Google Cloud Storage. is read"):
    load_pretrained("s3://bucket/t5_1_1_base/checkpoint_1000000")


def test_path_of_no_known_format_says_what_was_expected(tmp_path):
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(CheckpointError, match="not a checkpoint this project can read") as error:
    load_pretrained(tmp_path)
  message = str(error.value)
  assert "config.json" in message and "checkpoint_N" in message and "_METADATA" in message
  assert "weights.npz" in message


def test_latest_step_that_is_not_a_checkpoint(tmp_path):
  (tmp_path / "checkpoint_7").mkdir()
  with pytest.raises(CheckpointError, match="checkpoint_7 .the latest checkpoint"):
    load_pretrained(tmp_path)


def test_bad_config_argument(hf_folder):
  with pytest.raises(CheckpointError, match="Unknown T5 size 't5_1_1_tinny'.*t5_1_1_tiny"):
    load_pretrained(hf_folder, config="t5_1_1_tinny")
  with pytest.raises(CheckpointError, match="named size .str. or a T5Config"):
    load_pretrained(hf_folder, config={"emb_dim": 16})


# ---------------------------------------------------------------------------
# T5X: the reference checkpoint, damaged.


@pytest.fixture
def reference_step_dir(reference_dir) -> pathlib.Path:
  """The reference T5X checkpoint (`reference_dir` skips when ../shared is absent)."""
  return reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3"


@pytest.fixture
def t5x_copy(tmp_path, reference_step_dir) -> pathlib.Path:
  step_dir = tmp_path / "checkpoint_3"
  shutil.copytree(reference_step_dir, step_dir)
  for path in [step_dir, *step_dir.rglob("*")]:
    path.chmod(0o755 if path.is_dir() else 0o644)  # The reference is read-only.
  return step_dir


def test_named_size_that_does_not_match_the_checkpoint(reference_step_dir):
  with pytest.raises(CheckpointError, match="The named size 't5_1_1_base' does not match") as error:
    load_pretrained(reference_step_dir, config="t5_1_1_base")
  message = str(error.value)
  assert "emb_dim: 768 in the named size 't5_1_1_base', 4 in the checkpoint" in message
  assert "num_encoder_layers: 12" in message and "config='t5_1_1_tiny'" in message


def test_explicit_config_that_does_not_match(reference_step_dir):
  config = get_config("t5_1_1_tiny", mlp_activations=("relu",), logits_via_embedding=True)
  with pytest.raises(CheckpointError, match="T5Config passed as config= does not match") as error:
    load_pretrained(reference_step_dir, config=config)
  assert "gated_mlp: False" in str(error.value) and "logits_via_embedding: True" in str(error.value)


def test_corrupt_t5x_msgpack(t5x_copy):
  file = t5x_copy / "checkpoint"
  file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])
  with pytest.raises(CheckpointError, match="not a readable msgpack file.*truncated or corrupt"):
    load_pretrained(t5x_copy, config="t5_1_1_tiny")


def test_missing_zarr_chunk(t5x_copy):
  (t5x_copy / "target.token_embedder.embedding" / "3.0").unlink()
  with pytest.raises(CheckpointError, match="target.token_embedder.embedding") as error:
    load_pretrained(t5x_copy, config="t5_1_1_tiny")
  assert "3.0" in str(error.value) and "missing" in str(error.value)


def test_corrupt_zarr_chunk(t5x_copy):
  (t5x_copy / "target.encoder.layers_0.mlp.wo.kernel" / "0.0").write_bytes(b"not gzip at all")
  with pytest.raises(CheckpointError, match="(?s)target.encoder.layers_0.mlp.wo.kernel.*missing or corrupt"):
    load_pretrained(t5x_copy, config="t5_1_1_tiny")


def test_missing_zarr_folder(t5x_copy):
  shutil.rmtree(t5x_copy / "target.decoder.layers_1.mlp.wi_1.kernel")
  with pytest.raises(CheckpointError, match="target.decoder.layers_1.mlp.wi_1.kernel"):
    load_pretrained(t5x_copy)


def test_t5x_parameter_missing_from_the_tree(t5x_copy):
  import msgpack

  file = t5x_copy / "checkpoint"
  tree = msgpack.unpackb(file.read_bytes())
  del tree["optimizer"]["target"]["decoder"]["layers_1"]["pre_mlp_layer_norm"]
  file.write_bytes(msgpack.packb(tree))
  with pytest.raises(CheckpointError, match="1 missing parameter") as error:
    load_pretrained(t5x_copy, config="t5_1_1_tiny")
  assert "decoder/layers_1/pre_mlp_layer_norm/scale" in str(error.value)


def test_t5x_tree_without_parameters(tmp_path):
  import msgpack

  step_dir = tmp_path / "checkpoint_1"
  step_dir.mkdir()
  (step_dir / "checkpoint").write_bytes(msgpack.packb({"version": 3, "something": {"else": 1}}))
  with pytest.raises(CheckpointError, match="No parameters in the T5X checkpoint.*'something'"):
    load_pretrained(tmp_path)


def test_inference_needs_the_embedding(tmp_path):
  import orbax.checkpoint as ocp

  config = get_config("t5_1_0_tiny")
  flat = {p: np.zeros(s, np.float32) for p, s in expected_shapes(config).items()}
  del flat["token_embedder/embedding"]
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(tmp_path / "checkpoint_1", {"target": unflatten(flat)})
  with pytest.raises(CheckpointError, match="(?s)Cannot infer the T5 architecture.*token_embedder/embedding"):
    load_pretrained(tmp_path)


def _orbax_checkpoint(folder: pathlib.Path, config) -> None:
  import orbax.checkpoint as ocp

  rng = np.random.default_rng(0)  # Random values: zstd cannot shrink them below the ocdbt inline limit.
  params = unflatten({p: rng.normal(size=s).astype(np.float32) for p, s in expected_shapes(config).items()})
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(folder / "checkpoint_1", {"target": params})


def test_corrupt_orbax_data(tmp_path):
  config = get_config("t5_1_0_tiny", vocab_size=4096)  # Large enough for arrays outside the ocdbt index.
  _orbax_checkpoint(tmp_path, config)
  data = max((tmp_path / "checkpoint_1").rglob("d/*"), key=lambda f: f.stat().st_size)
  assert data.stat().st_size > 100_000
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  with pytest.raises(CheckpointError, match="(?s)Cannot restore the parameters of the orbax checkpoint.*corrupt"):
    load_pretrained(tmp_path, config=config)


def test_corrupt_orbax_metadata(tmp_path):
  config = get_config("t5_1_0_tiny")
  _orbax_checkpoint(tmp_path, config)
  (tmp_path / "checkpoint_1" / "_METADATA").write_text("{not json")
  with pytest.raises(CheckpointError, match="orbax checkpoint .* metadata .* is missing or corrupt"):
    load_pretrained(tmp_path, config=config)


# ---------------------------------------------------------------------------
# Writing


def test_save_refuses_params_that_do_not_match(tmp_path):
  config = get_config("t5_1_0_tiny")
  flat = {p: np.zeros(s, np.float32) for p, s in expected_shapes(config).items()}
  del flat["encoder/layers_1/mlp/wo/kernel"]
  flat["decoder/layers_0/mlp/wi/kernel"] = np.zeros((16, 33), np.float32)
  with pytest.raises(CheckpointError, match="missing parameter") as error:
    save_hf_pretrained(tmp_path, config, unflatten(flat))
  assert "encoder/layers_1/mlp/wo/kernel" in str(error.value)
  assert "decoder/layers_0/mlp/wi/kernel: expected [16, 32], found [16, 33]" in str(error.value)
  assert not (tmp_path / "model.safetensors").exists()


def test_save_refuses_configs_hugging_face_cannot_express(tmp_path):
  config = get_config("decoder_only_tiny")
  with pytest.raises(CheckpointError, match="no decoder-only"):
    save_hf_pretrained(tmp_path, config, {})
  config = get_config("t5_1_0_tiny", mlp_activations=("gelu_exact", "linear"))
  with pytest.raises(CheckpointError, match="has no Hugging Face feed_forward_proj"):
    save_hf_pretrained(tmp_path, config, {})
