"""The demo family's build steps (`python -m prompt_tuning.demo_data.build ... --size`): pretrain, export, LM-adapt and
export again, for real, on a small corpus written here (the real one needs two Debian packages)."""

import json

import jax
import numpy as np
import pytest

from prompt_tuning import demo_data
from prompt_tuning.checkpoints import load_pretrained
from prompt_tuning.demo_data import build
from prompt_tuning.models.configs import get_config


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
  """A corpus of the animal-or-plant task's definitions and the shipped vocabulary, laid out as the corpus and vocab
  steps write them."""
  root = tmp_path_factory.mktemp("demo_build")
  rows = [json.loads(line) for line in (demo_data.WORDNET_CATEGORY_TASK_DIR / "train.jsonl").read_text().splitlines()]
  lines = [f"{r['word']}: {r['definition']}." for r in rows]
  (root / "corpus").mkdir()
  (root / "corpus" / "train.txt").write_text("\n".join(lines[:2000]) + "\n")
  (root / "corpus" / "validation.txt").write_text("\n".join(lines[2000:2200]) + "\n")
  (root / "vocab").mkdir()
  (root / "vocab" / "demo_spm.model").write_bytes(demo_data.DEMO_VOCABULARY.read_bytes())
  return root


def test_a_smaller_member_is_pretrained_exported_lm_adapted_and_exported_again(build_dir, tmp_path):
  assets = tmp_path / "assets"
  args = ["--size", "demo_1m", "--build-dir", str(build_dir), "--assets-dir", str(assets), "--steps", "2"]
  assert build.main(["pretrain", "export", "lm_adapt", "export_lm", *args]) == 0

  span, lm = assets / "demo_t5_1m", assets / "demo_t5_1m_lm"
  # Only demo_t5 carries the family's vocabulary; the others name it in their card.
  assert sorted(p.name for p in span.iterdir()) == [
    "MODEL_CARD.md",
    "SHA256SUMS",  # checked at load: a flipped bit in a copy is refused
    "config.json",
    "model.safetensors",
    "pretraining.json",
  ]
  assert sorted(p.name for p in lm.iterdir()) == sorted(p.name for p in span.iterdir())
  expected = get_config("t5_1_1_demo_1m").replace(dropout_rate=0.0)
  weights = {}
  for folder in (span, lm):
    config, params = load_pretrained(folder)
    assert config.replace(dropout_rate=0.0) == expected
    weights[folder.name] = params
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(weights["demo_t5_1m"]))
  assert count == 934_592

  span_facts = json.loads((span / "pretraining.json").read_text())
  lm_facts = json.loads((lm / "pretraining.json").read_text())
  assert (span_facts["objective"], span_facts["steps"], span_facts["parameters"]) == ("span_corruption", 2, count)
  assert lm_facts["objective"] == "prefix_lm" and lm_facts["steps"] == 2
  assert lm_facts["initialized_from"] == {"folder": "demo_t5_1m", "steps": 2}
  # LM adaptation trained every weight, starting from the exported span-corruption model.
  span_mlp = weights["demo_t5_1m"]["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  lm_mlp = weights["demo_t5_1m_lm"]["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  assert not np.array_equal(span_mlp, lm_mlp)
  assert np.abs(span_mlp - lm_mlp).max() < 0.1 * np.abs(span_mlp).max()

  card = (lm / "MODEL_CARD.md").read_text()
  for fact in ("# demo_t5_1m_lm", "934,592", "prefix-LM", "demo_model_path.lm_adapted = True", "WordNet 3.0"):
    assert fact in card
  assert "span corruption only" in (span / "MODEL_CARD.md").read_text()
  assert "{" not in card + (span / "MODEL_CARD.md").read_text()  # every field filled in


def test_export_before_training_says_which_step_to_run(build_dir, tmp_path):
  with pytest.raises(SystemExit, match="run the 'lm_adapt' step for --size demo_3m first"):
    build.main(["export_lm", "--size", "demo_3m", "--build-dir", str(build_dir), "--assets-dir", str(tmp_path)])
