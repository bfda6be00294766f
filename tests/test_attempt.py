"""ATTEMPT (Asai et al. 2022, `prompt_tuning.methods.attempt`) with sources from a prompt library: checked as transfer
checks a source (width, recorded backbone), and a gin run through `prompt-tuning train` that trains the target and
the projection and leaves the sources as the library holds them. (The attention, the gradients and the export round
trip on a tiny model: tests/test_methods.py.)"""

import json

import numpy as np
import pytest

from prompt_tuning import transfer
from prompt_tuning.checkpoints.prompt_files import BACKBONE_KEYS, load_prompt_file
from prompt_tuning.methods import ATTEMPT
from prompt_tuning.prompts import random_uniform
from prompt_tuning.serve.store import save_entry

LENGTH = 3


@pytest.fixture(scope="module")
def library(trained_run, tmp_path_factory):
  """Sources for the shared run's backbone (width 4): its exports of steps 3 and 4 (recording the backbone), a prompt
  8 wide and one recording another backbone."""
  folder = tmp_path_factory.mktemp("attempt_library")
  meta = json.loads((trained_run.model_dir / "checkpoints" / "4" / "meta" / "metadata").read_text())
  backbone = {key: str(meta[key]) for key in BACKBONE_KEYS}
  for step in (3, 4):
    prompt = load_prompt_file(trained_run.model_dir / "numpy_checkpoints" / f"checkpoint_{step}")
    save_entry(folder / f"step{step}.safetensors", "prompt", {"prompt": prompt}, backbone)
  save_entry(folder / "wide.safetensors", "prompt", {"prompt": np.ones((LENGTH, 8), np.float32)})
  other = {**backbone, "backbone_fingerprint": "0" * 32, "backbone_path": "/models/another_t5"}
  save_entry(folder / "elsewhere.safetensors", "prompt", {"prompt": np.ones((LENGTH, 4), np.float32)}, other)
  return folder, meta["backbone_fingerprint"]


def test_sources_of_another_width_or_backbone_are_refused_by_name(library):
  import prompt_tuning as pt

  folder, fingerprint = library
  config = pt.get_config("t5_1_1_tiny")
  good = ATTEMPT(LENGTH, transfer.source_prompts(["step3", "step4"], str(folder)), random_uniform(0.5))
  good.check_backbone(config, lambda: fingerprint, "t5x_tiny")
  for names, why in (
    (["wide"], "width 8 but this backbone embeds tokens in 4"),
    (["step3", "elsewhere"], "another backbone"),
  ):
    method = ATTEMPT(LENGTH, transfer.source_prompts(names, str(folder)), random_uniform(0.5))
    with pytest.raises(transfer.TransferError, match=f"source '{names[-1]}' .*{why}"):
      method.check_backbone(config, lambda: fingerprint, "t5x_tiny")
  with pytest.raises(ValueError, match="have 3 vectors but PROMPT_LENGTH is 5"):
    ATTEMPT(5, good.sources, random_uniform(0.5))


def test_a_gin_run_trains_the_target_and_projection_with_the_sources_frozen(trained_run, library, tmp_path, _cli):
  folder, _ = library
  flags = (
    "--gin_file=prompts/attempt.gin",
    "--gin.ATTEMPT_SOURCES=['step3', 'step4']",
    f"--gin.ATTEMPT_LIBRARY='{folder}'",
    "--gin.ATTEMPT_PROJECTION_DIM=4",
    "--gin.TRAIN_STEPS=2",
  )
  model_dir = tmp_path / "run"
  _cli("train", *trained_run.flags, *flags, f"--gin.MODEL_DIR='{model_dir}'")
  from safetensors.numpy import load_file

  exports = [load_file(model_dir / "numpy_checkpoints" / f"checkpoint_{s}" / "attempt.safetensors") for s in (1, 2)]
  sources = np.stack([load_prompt_file(folder / f"step{s}.safetensors") for s in (3, 4)])
  for export in exports:
    np.testing.assert_array_equal(export["sources"], sources)  # frozen: the library's values, bit for bit
  for name in ("target", "down", "up", "norm.scale"):
    assert not np.array_equal(exports[0][name], exports[1][name]), name  # trained
  # infer reads the export (its sources included) and computes every row's prompt from its input.
  out = tmp_path / "infer.jsonl"
  infer = _cli(
    "infer",
    *trained_run.flags,
    *flags,
    "--gin_file=runs/prompt_infer.gin",  # after attempt.gin: it still moves the prompt to ATTEMPT
    "--gin.infer.num_examples=4",
    f"--gin.INFER_OUTPUT='{out}'",
    f"--gin.MODEL_DIR='{model_dir}'",
  )
  assert infer.returncode == 0 and len([json.loads(line)["prediction"] for line in out.read_text().splitlines()]) == 4
  # Resuming with other sources (here: the same two, swapped) is refused, naming what the checkpoints trained with.
  swapped = ("--gin.ATTEMPT_SOURCES=['step4', 'step3']", "--gin.TRAIN_STEPS=3", f"--gin.MODEL_DIR='{model_dir}'")
  resumed = _cli("train", *trained_run.flags, *flags, *swapped, check=False)
  assert resumed.returncode == 1 and "with the frozen inputs step3, step4 [2, 3, 4]" in resumed.stderr, resumed.stderr
  sources = "--gin.ATTEMPT_SOURCES=['wide']"
  refused = _cli("train", *trained_run.flags, *flags, sources, f"--gin.MODEL_DIR='{tmp_path / 'refused'}'", check=False)
  assert refused.returncode == 1 and "source 'wide'" in refused.stderr, refused.stderr[-2000:]
  assert not (tmp_path / "refused" / "checkpoints").exists()
