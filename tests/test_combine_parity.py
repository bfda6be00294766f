"""Every combination mode and per-row prompt lengths against the Hugging Face T5 and PEFT.

PEFT's prompt tuning has only the "prefix" mode; for the others the joined
sequence is built here in numpy, independently of `combine`, and fed to the
Hugging Face T5 as `inputs_embeds`.
"""

import copy

import jitted
import numpy as np
import pytest
from hf_models import hf_model, padded_batch, save, shift_right, torch

import prompt_tuning as pt

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  model = hf_model("t5_1_1")
  config, params = pt.load_pretrained(save(model, tmp_path_factory.mktemp("t5_1_1")))
  return model, config, params


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(5)
  enc = padded_batch(rng, 3, 9, 100, [9, 6, 3])
  enc[0, 8], enc[1, 5] = 1, 1  # rows 0 and 1 end with EOS, row 2 does not
  targets = padded_batch(rng, 3, 6, 100, [6, 4, 2])
  prompts = rng.normal(size=(3, 4, 32)).astype(np.float32)
  return enc, shift_right(targets), targets, prompts


def _start(mode, row):
  n = int((row > 0).sum())
  return {"prefix": 0, "prefix_after_bos": 1, "suffix": n - 1 if row[n - 1] == 1 else n, "suffix_after_eos": n}[mode]


def _hf_joined(model, enc, prompts, lengths, mode):
  """The joined embeddings [B, T + P, D] and attention mask, built row by row."""
  table = model.shared.weight.detach().numpy()
  width = enc.shape[1] + prompts.shape[1]
  embeds, mask = np.zeros((len(enc), width, table.shape[1]), np.float32), np.zeros((len(enc), width), np.int64)
  for b, row in enumerate(enc):
    real = row[row > 0]
    s = _start(mode, row)
    joined = np.concatenate([table[real[:s]], prompts[b, : lengths[b]], table[real[s:]]])
    embeds[b, : len(joined)], mask[b, : len(joined)] = joined, 1
  return embeds, mask


def _rel_err(ours, theirs, targets):
  real = targets > 0
  return np.abs(np.asarray(ours) - theirs)[real].max() / np.abs(theirs)[real].max()


@pytest.mark.parametrize("mode", ["prefix", "prefix_after_bos", "suffix", "suffix_after_eos"])
def test_every_mode_matches_hf_on_the_joined_embeddings(loaded, batch, mode):
  model, config, params = loaded
  enc, dec_in, targets, prompts = batch
  lengths = np.array([4, 2, 0])
  embeds, mask = _hf_joined(model, enc, prompts, lengths, mode)
  with torch.no_grad():
    theirs = model(
      inputs_embeds=torch.tensor(embeds),
      attention_mask=torch.tensor(mask),
      decoder_input_ids=torch.tensor(dec_in),
      decoder_attention_mask=torch.tensor(targets > 0).long(),
    ).logits.numpy()
  ours = jitted.apply(
    pt.T5(config),
    {"params": params},
    enc,
    dec_in,
    targets,
    prompt=prompts,
    prompt_lengths=lengths,
    prompt_combination=mode,
  )
  assert _rel_err(ours, theirs, targets) < 1e-4


def test_rows_with_shorter_prompts_match_peft_with_those_prompts(loaded, batch):
  model, config, params = loaded
  enc, dec_in, targets, prompts = batch
  lengths = np.array([4, 1, 3])
  ours = np.asarray(
    jitted.apply(pt.T5(config), {"params": params}, enc, dec_in, targets, prompt=prompts, prompt_lengths=lengths)
  )
  for b in range(3):
    cfg = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=int(lengths[b]))
    wrapped = peft.get_peft_model(copy.deepcopy(model), cfg).eval()
    with torch.no_grad():
      wrapped.prompt_encoder["default"].embedding.weight[: lengths[b]] = torch.tensor(prompts[b, : lengths[b]])
      theirs = wrapped(
        input_ids=torch.tensor(enc[b : b + 1]),
        attention_mask=torch.tensor(enc[b : b + 1] > 0).long(),
        decoder_input_ids=torch.tensor(dec_in[b : b + 1]),
        decoder_attention_mask=torch.tensor(targets[b : b + 1] > 0).long(),
      ).logits.numpy()
    assert _rel_err(ours[b : b + 1], theirs, targets[b : b + 1]) < 1e-4
