"""Our T5 against the Hugging Face PyTorch T5 and PEFT prompt tuning (random tiny weights)."""

import copy

import jitted
import numpy as np
import pytest
from hf_models import hf_model, padded_batch, save, seq2seq_logits, shift_right, torch

import prompt_tuning as pt
from prompt_tuning import decoding
from prompt_tuning.models.layers import relative_position_bucket

peft = pytest.importorskip("peft")

KINDS = ["t5_1_0", "t5_1_1"]


def _rel_err(ours, theirs, mask=None):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  diff = np.abs(ours - theirs)
  if mask is not None:
    diff = diff[mask]
  return diff.max() / np.abs(theirs).max()


@pytest.fixture(scope="module", params=KINDS)
def loaded(request, tmp_path_factory):
  model = hf_model(request.param)
  config, params = pt.load_pretrained(save(model, tmp_path_factory.mktemp(request.param)))
  return model, config, params


def test_logits_match_hf_on_padded_batch(loaded):
  model, config, params = loaded
  rng = np.random.default_rng(0)
  enc = padded_batch(rng, 3, 17, 100, [17, 9, 4])
  targets = padded_batch(rng, 3, 11, 100, [11, 6, 2])
  dec_in = shift_right(targets)
  theirs = seq2seq_logits(model, enc, dec_in, targets)
  ours = jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets)
  assert ours.shape == theirs.shape and ours.dtype == np.float32
  assert _rel_err(ours, theirs, targets > 0) < 1e-4


def test_greedy_matches_hf_generate(loaded):
  model, config, params = loaded
  enc = padded_batch(np.random.default_rng(1), 4, 12, 100, [12, 8, 3, 10])
  with torch.no_grad():
    # HF's KV cache indexes decoder layers by the encoder's depth; without the
    # cache it handles unequal depths.
    theirs = model.generate(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0).long(),
      max_new_tokens=16,
      num_beams=1,
      do_sample=False,
      use_cache=False,
    ).numpy()[:, 1:]
  ours = decoding.generate(config, params, enc, settings=decoding.DecodingSettings(max_decode_length=16)).tokens
  ours = np.asarray(ours)[:, : theirs.shape[1]]
  np.testing.assert_array_equal(ours, theirs)
  assert len({tuple(row) for row in ours}) > 1, "degenerate model: every row decoded the same"


def _peft_model(model, prompt):
  cfg = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=prompt.shape[0])
  wrapped = peft.get_peft_model(model, cfg)
  with torch.no_grad():
    # For seq2seq models PEFT keeps one block of virtual tokens per transformer
    # submodule (2 by default) and feeds the encoder the first block.
    wrapped.prompt_encoder["default"].embedding.weight[: prompt.shape[0]] = torch.tensor(prompt)
  return wrapped.eval()


def test_shared_prompt_matches_peft(loaded):
  model, config, params = loaded
  rng = np.random.default_rng(2)
  prompt = rng.normal(size=(5, config.emb_dim)).astype(np.float32)
  enc = padded_batch(rng, 3, 13, 100, [13, 7, 2])
  targets = padded_batch(rng, 3, 9, 100, [9, 5, 3])
  dec_in = shift_right(targets)
  theirs = seq2seq_logits(_peft_model(hf_model_copy(model), prompt), enc, dec_in, targets)
  ours = jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets, prompt=prompt)
  assert _rel_err(ours, theirs, targets > 0) < 1e-4
  # The prompt matters: without it the logits differ.
  plain = jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets)
  assert _rel_err(plain, theirs, targets > 0) > 1e-2


def test_per_row_prompts_match_peft_row_by_row(loaded):
  model, config, params = loaded
  rng = np.random.default_rng(3)
  prompts = rng.normal(size=(3, 4, config.emb_dim)).astype(np.float32)
  enc = padded_batch(rng, 3, 10, 100, [10, 6, 3])
  targets = padded_batch(rng, 3, 7, 100, [7, 4, 2])
  dec_in = shift_right(targets)
  ours = np.asarray(jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets, prompt=prompts))
  for row in range(3):
    wrapped = _peft_model(hf_model_copy(model), prompts[row])
    theirs = seq2seq_logits(wrapped, enc[row : row + 1], dec_in[row : row + 1], targets[row : row + 1])
    assert _rel_err(ours[row : row + 1], theirs, targets[row : row + 1] > 0) < 1e-4


def test_greedy_with_prompt_matches_peft_generate(loaded):
  model, config, params = loaded
  rng = np.random.default_rng(4)
  prompt = rng.normal(size=(3, config.emb_dim)).astype(np.float32)
  enc = padded_batch(rng, 2, 8, 100, [8, 5])
  wrapped = _peft_model(hf_model_copy(model), prompt)
  with torch.no_grad():
    theirs = wrapped.generate(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0).long(),
      max_new_tokens=10,
      num_beams=1,
      do_sample=False,
      use_cache=False,
    ).numpy()[:, 1:]
  settings = decoding.DecodingSettings(max_decode_length=10)
  ours = np.asarray(decoding.generate(config, params, enc, prompt=prompt, settings=settings).tokens)
  np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)


def hf_model_copy(model):
  """PEFT wraps (and mutates) the model it is given; keep the cached one clean."""
  return copy.deepcopy(model)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (4, 8), (64, 256)])
def test_relative_position_buckets_match_hf(bidirectional, num_buckets, max_distance):
  from transformers.models.t5.modeling_t5 import T5Attention

  relative = np.arange(-600, 601)
  theirs = T5Attention._relative_position_bucket(
    torch.tensor(relative), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
  ).numpy()
  ours = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
  np.testing.assert_array_equal(np.asarray(ours), theirs)
