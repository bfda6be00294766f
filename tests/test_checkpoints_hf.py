"""Hugging Face T5 folders: every weight format reads to the same parameters, and the writer round-trips.

The expected parameters are built here from the PyTorch state dict with a
mapping written out independently of `prompt_tuning.checkpoints.hf_names`.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from prompt_tuning.checkpoints import Format, detect_format, load_pretrained, save_hf_pretrained  # noqa: E402
from prompt_tuning.checkpoints.param_tree import expected_shapes, flatten, unflatten  # noqa: E402
from prompt_tuning.models.configs import T5Config  # noqa: E402

# d_kv (8) * heads (3) != d_model (16) on purpose; 2 encoder and 3 decoder layers.
TINY = dict(
  vocab_size=96,
  d_model=16,
  d_kv=8,
  num_heads=3,
  d_ff=32,
  num_layers=2,
  num_decoder_layers=3,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=20,
  dropout_rate=0.0,
  decoder_start_token_id=0,
)
OURS = dict(
  vocab_size=96,
  emb_dim=16,
  num_heads=3,
  head_dim=8,
  mlp_dim=32,
  num_encoder_layers=2,
  num_decoder_layers=3,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=20,
  dropout_rate=0.0,
)
# kind -> (feed_forward_proj, our config)
KINDS = {
  "t5_1_0": ("relu", T5Config(**OURS, mlp_activations=("relu",), logits_via_embedding=True)),
  "t5_1_1": ("gated-gelu", T5Config(**OURS, mlp_activations=("gelu", "linear"), logits_via_embedding=False)),
}


def _randomize(model, seed: int) -> None:
  """Gives every weight distinct values (layer norms included), so a swapped name cannot go unnoticed."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      param.copy_(1.0 + 0.1 * noise if "layer_norm" in name else 0.3 * noise)


def _hf_model(kind: str, seed: int = 0):
  torch.manual_seed(seed)
  feed_forward_proj, _ = KINDS[kind]
  tied = kind == "t5_1_0"
  config = transformers.T5Config(**TINY, feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not tied:  # A T5 1.1 has its own output projection.
    model.lm_head.weight = torch.nn.Parameter(torch.zeros(TINY["vocab_size"], TINY["d_model"]))
  _randomize(model, seed)
  return model


def _state_dict(model) -> dict[str, np.ndarray]:
  return {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def _write_flax_msgpack(folder: pathlib.Path, state_dict: dict[str, np.ndarray]) -> None:
  """Writes the Hugging Face Flax layout (`shared/embedding`, `.../q/kernel` as [in, out], ...)."""
  from flax import serialization

  tree = {}
  for name, value in state_dict.items():
    if name.endswith("embed_tokens.weight"):
      continue  # The Flax layout has no tied copies.
    module = name.removesuffix(".weight").replace(".", "/")
    if module == "shared" or module.endswith("relative_attention_bias"):
      tree[f"{module}/embedding"] = value
    elif module.endswith("layer_norm"):
      tree[f"{module}/weight"] = value
    else:
      tree[f"{module}/kernel"] = value.T
  (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(unflatten(tree)))


def _folders(root: pathlib.Path, model) -> dict[str, pathlib.Path]:
  folders = {name: root / name for name in ("safetensors", "sharded", "flax", "bin")}
  model.save_pretrained(folders["safetensors"])
  model.save_pretrained(folders["sharded"], max_shard_size="20KB")
  assert (folders["sharded"] / "model.safetensors.index.json").is_file()
  state_dict = _state_dict(model)
  if model.config.scale_decoder_outputs:  # Tied: old Flax files had no lm_head.
    state_dict.pop("lm_head.weight")
  for name in ("flax", "bin"):
    folders[name].mkdir()
    shutil.copy(folders["safetensors"] / "config.json", folders[name])
  _write_flax_msgpack(folders["flax"], state_dict)
  torch.save(model.state_dict(), folders["bin"] / "pytorch_model.bin")  # What safe_serialization=False wrote.
  return folders


@pytest.fixture(scope="module", params=list(KINDS))
def hf_case(request, tmp_path_factory):
  kind = request.param
  model = _hf_model(kind)
  return kind, model, _folders(tmp_path_factory.mktemp(kind), model)


def _expected_params(state_dict: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
  """Our tree from a PyTorch T5 state dict, mapped by hand."""
  projections = {"q": "query", "k": "key", "v": "value", "o": "out"}
  mlp = ("wi",) if kind == "t5_1_0" else ("wi_0", "wi_1")
  out = {"token_embedder/embedding": state_dict["shared.weight"]}
  for stack, layers in (("encoder", TINY["num_layers"]), ("decoder", TINY["num_decoder_layers"])):
    bias = state_dict[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]  # [buckets, heads]
    out[f"{stack}/relpos_bias/rel_embedding"] = bias.T
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    out[f"{stack}/{norm}/scale"] = state_dict[f"{stack}.final_layer_norm.weight"]
    for i in range(layers):
      hf, ours = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
      attention = "attention" if stack == "encoder" else "self_attention"
      first_norm = "pre_attention_layer_norm" if stack == "encoder" else "pre_self_attention_layer_norm"
      out[f"{ours}/{first_norm}/scale"] = state_dict[f"{hf}.0.layer_norm.weight"]
      for short, long in projections.items():
        out[f"{ours}/{attention}/{long}/kernel"] = state_dict[f"{hf}.0.SelfAttention.{short}.weight"].T
      mlp_layer = 1
      if stack == "decoder":
        mlp_layer = 2
        out[f"{ours}/pre_cross_attention_layer_norm/scale"] = state_dict[f"{hf}.1.layer_norm.weight"]
        for short, long in projections.items():
          out[f"{ours}/encoder_decoder_attention/{long}/kernel"] = state_dict[
            f"{hf}.1.EncDecAttention.{short}.weight"
          ].T
      out[f"{ours}/pre_mlp_layer_norm/scale"] = state_dict[f"{hf}.{mlp_layer}.layer_norm.weight"]
      for name in (*mlp, "wo"):
        out[f"{ours}/mlp/{name}/kernel"] = state_dict[f"{hf}.{mlp_layer}.DenseReluDense.{name}.weight"].T
  if kind == "t5_1_1":
    out["decoder/logits_dense/kernel"] = state_dict["lm_head.weight"].T
  return out


def _assert_params_equal(params, expected: dict[str, np.ndarray]) -> None:
  flat = flatten(params)
  assert sorted(flat) == sorted(expected)
  for path, value in expected.items():
    assert flat[path].dtype == np.float32, path
    np.testing.assert_array_equal(flat[path], value, err_msg=path)


# ---------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("variant", ["safetensors", "sharded", "flax", "bin"])
def test_every_format_loads_the_same_params(hf_case, variant):
  kind, model, folders = hf_case
  assert detect_format(folders[variant]) == (Format.HUGGING_FACE, str(folders[variant]))
  config, params = load_pretrained(folders[variant])
  assert config == KINDS[kind][1]
  _assert_params_equal(params, _expected_params(_state_dict(model), kind))


def test_tied_output_without_scaling(tmp_path):
  """transformers 5 saves `tie_word_embeddings=False` as tied weights plus `scale_decoder_outputs: false`."""
  torch.manual_seed(3)
  config = transformers.T5Config(**TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.save_pretrained(tmp_path)
  written = json.loads((tmp_path / "config.json").read_text())
  if written.get("scale_decoder_outputs") is not False:
    pytest.skip("this transformers version writes untied T5 1.1 weights the classic way")
  ours, params = load_pretrained(tmp_path)
  assert ours == KINDS["t5_1_1"][1]
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], params["token_embedder"]["embedding"].T)


def _our_logits(config, params, encoder_tokens, decoder_tokens):
  t5 = pytest.importorskip("prompt_tuning.models.t5")
  return np.asarray(t5.T5(config).apply({"params": params}, encoder_tokens, decoder_tokens))


def _hf_logits(model, encoder_tokens, decoder_tokens):
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(encoder_tokens),
      attention_mask=torch.tensor(encoder_tokens > 0),
      decoder_input_ids=torch.tensor(decoder_tokens),
    )
  return out.logits.numpy()


TOKENS = (np.array([[5, 9, 2, 44, 1], [7, 3, 1, 0, 0]]), np.array([[0, 3, 4, 8], [0, 6, 1, 12]]))


def test_logits_match_transformers_for_each_output_convention(hf_case, tmp_path):
  """Checks the tied+scaled (T5 1.0) and untied (T5 1.1) readings against transformers itself."""
  kind, model, folders = hf_case
  config, params = load_pretrained(folders["safetensors"])
  np.testing.assert_allclose(_our_logits(config, params, *TOKENS), _hf_logits(model, *TOKENS), atol=2e-4, rtol=2e-4)


# ---------------------------------------------------------------------------
# Writing


def _random_params(config: T5Config, seed: int, dtype=np.float32) -> dict:
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in expected_shapes(config).items():
    values = 1.0 + 0.1 * rng.normal(size=shape) if path.endswith("/scale") else 0.3 * rng.normal(size=shape)
    flat[path] = values.astype(dtype)
  return unflatten(flat)


@pytest.mark.parametrize("kind", list(KINDS))
def test_written_folder_opens_in_transformers_with_our_values(tmp_path, kind):
  config = KINDS[kind][1]
  params = _random_params(config, seed=11)
  save_hf_pretrained(tmp_path, config, params)
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["model_type"] == "t5" and written["architectures"] == ["T5ForConditionalGeneration"]
  assert written["feed_forward_proj"] == KINDS[kind][0]
  assert written["tie_word_embeddings"] is (kind == "t5_1_0")
  assert (written["decoder_start_token_id"], written["pad_token_id"], written["eos_token_id"]) == (0, 0, 1)
  model, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert model.config.d_kv == 8 and model.config.num_decoder_layers == 3
  _assert_params_equal(params, _expected_params(_state_dict(model), kind))
  np.testing.assert_allclose(
    _our_logits(config, params, *TOKENS), _hf_logits(model.eval(), *TOKENS), atol=2e-4, rtol=2e-4
  )


@pytest.mark.parametrize("kind", list(KINDS))
def test_written_folder_loads_back_equal(tmp_path, kind):
  config = KINDS[kind][1]
  params = _random_params(config, seed=12)
  save_hf_pretrained(tmp_path / "out", config, params)
  loaded_config, loaded = load_pretrained(tmp_path / "out")
  assert loaded_config == config
  _assert_params_equal(loaded, flatten(params))


def test_bfloat16_round_trip(tmp_path):
  import jax.numpy as jnp

  config = KINDS["t5_1_1"][1]
  params = _random_params(config, seed=13, dtype=jnp.bfloat16)
  save_hf_pretrained(tmp_path, config, params)
  assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
  _, loaded = load_pretrained(tmp_path, dtype=jnp.bfloat16)
  for path, value in flatten(params).items():
    assert flatten(loaded)[path].dtype == jnp.bfloat16
    np.testing.assert_array_equal(flatten(loaded)[path], value, err_msg=path)
  model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
  assert model.shared.weight.dtype == torch.bfloat16


def test_config_json_of_older_transformers(hf_case, tmp_path):
  """Files written before `scale_decoder_outputs` existed say only `tie_word_embeddings`."""
  kind, model, folders = hf_case
  folder = tmp_path / "old"
  shutil.copytree(folders["safetensors"], folder)
  written = json.loads((folder / "config.json").read_text())
  written.pop("scale_decoder_outputs", None)
  written["tie_word_embeddings"] = kind == "t5_1_0"
  (folder / "config.json").write_text(json.dumps(written))
  config, params = load_pretrained(folder)
  assert config == KINDS[kind][1]
  _assert_params_equal(params, _expected_params(_state_dict(model), kind))


def test_config_argument_overrides_config_json_with_a_warning(hf_case, caplog):
  kind, model, folders = hf_case
  wanted = KINDS[kind][1].replace(relative_attention_max_distance=64, dropout_rate=0.1)
  config, params = load_pretrained(folders["safetensors"], config=wanted)
  assert config == wanted
  assert "relative_attention_max_distance=64 (file: 20)" in caplog.text
  _assert_params_equal(params, _expected_params(_state_dict(model), kind))
