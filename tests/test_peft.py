"""PEFT prompt-tuning adapters: ours load in PEFT, PEFT's load in ours, with the same logits."""

import copy
import json

import jax
import jitted
import numpy as np
import pytest
from hf_models import hf_model, padded_batch, save, seq2seq_logits, shift_right, torch

import prompt_tuning as pt
from prompt_tuning import prompts
from prompt_tuning.checkpoints.peft import export_peft_adapter, load_peft_adapter

peft = pytest.importorskip("peft")


def _fresh_copy(model):
  """PEFT wraps (and mutates) the model it is given; keep the cached one clean.

  A deep copy, not a model rebuilt from `model.config`: transformers 5 forces
  T5Config.tie_word_embeddings to True, so a rebuilt T5 1.1 may come out tied.
  """
  return copy.deepcopy(model).eval()


def _batch(seed):
  rng = np.random.default_rng(seed)
  enc = padded_batch(rng, 3, 9, 100, [9, 5, 2])
  targets = padded_batch(rng, 3, 6, 100, [6, 4, 1])
  return enc, shift_right(targets), targets


def _rel_err(ours, theirs, targets):
  mask = targets > 0
  return np.abs(np.asarray(ours) - theirs)[mask].max() / np.abs(theirs)[mask].max()


@pytest.fixture(scope="module", params=["t5_1_0", "t5_1_1"])
def loaded(request, tmp_path_factory):
  model = hf_model(request.param)
  config, params = pt.load_pretrained(save(model, tmp_path_factory.mktemp(request.param)))
  return model, config, params


def test_exported_adapter_loads_in_peft_with_our_logits(loaded, tmp_path):
  model, config, params = loaded
  prompt = np.random.default_rng(0).normal(size=(4, config.emb_dim)).astype(np.float32)
  export_peft_adapter(prompt, tmp_path, base_model_name_or_path="tiny-t5", num_layers=config.num_decoder_layers)
  adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert adapter_config["num_virtual_tokens"] == 4 and adapter_config["token_dim"] == config.emb_dim
  wrapped = peft.PeftModel.from_pretrained(_fresh_copy(model), tmp_path).eval()
  enc, dec_in, targets = _batch(1)
  theirs = seq2seq_logits(wrapped, enc, dec_in, targets)
  ours = jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets, prompt=prompt)
  assert _rel_err(ours, theirs, targets) < 1e-4
  # PEFT holds exactly our prompt, and reading the folder back gives it too.
  np.testing.assert_array_equal(wrapped.prompt_encoder["default"].embedding.weight.detach().numpy(), prompt)
  np.testing.assert_array_equal(load_peft_adapter(tmp_path), prompt)


def test_adapter_saved_by_peft_imports_withseq2seq_logits(loaded, tmp_path):
  model, config, params = loaded
  # PEFT's seq2seq default (num_transformer_submodules 2) stores 2P rows; the first P are the encoder prompt.
  cfg = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3)
  wrapped = peft.get_peft_model(_fresh_copy(model), cfg).eval()
  with torch.no_grad():
    wrapped.prompt_encoder["default"].embedding.weight.normal_()
  wrapped.save_pretrained(tmp_path)
  prompt = load_peft_adapter(tmp_path)
  assert prompt.shape == (3, config.emb_dim) and prompt.dtype == np.float32
  enc, dec_in, targets = _batch(2)
  theirs = seq2seq_logits(wrapped, enc, dec_in, targets)
  ours = jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets, prompt=prompt)
  assert _rel_err(ours, theirs, targets) < 1e-4
  # The prompt initializer reads the adapter folder and checks it against the backbone.
  embedding = params["token_embedder"]["embedding"]
  from_file = prompts.init_prompt(jax.random.key(0), prompts.from_file(tmp_path), embedding, 3)
  np.testing.assert_array_equal(from_file, prompt)


def test_other_adapters_are_refused_with_a_reason(tmp_path):
  lora = peft.get_peft_model(
    _fresh_copy(hf_model("t5_1_1")), peft.LoraConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, target_modules=["q", "v"])
  )
  lora.save_pretrained(tmp_path / "lora")
  with pytest.raises(ValueError, match="LORA adapter; only PEFT prompt-tuning adapters .* changes the backbone"):
    load_peft_adapter(tmp_path / "lora")
  with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
    load_peft_adapter(tmp_path)


def test_inconsistent_adapter_is_refused(tmp_path):
  export_peft_adapter(np.ones((4, 8), np.float32), tmp_path)
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  config["num_virtual_tokens"] = 5
  (tmp_path / "adapter_config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="inconsistent"):
    load_peft_adapter(tmp_path)
