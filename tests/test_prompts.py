"""Prompt initializers and prompt files, on the real T5 SentencePiece model and embedding table."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.checkpoints import prompt_files

POSITIVE, NEGATIVE = 1465, 2841  # "positive" and "negative" are one piece each on the T5 model
ENTAILMENT = [3, 35, 5756, 297]  # "entailment": "▁", "en", "tail", "ment"


def _row_ids(prompt, embedding):
  """The embedding row each prompt vector equals (asserting there is one)."""
  matches = np.all(np.asarray(embedding)[None] == np.asarray(prompt)[:, None], axis=-1)  # [P, V]
  assert matches.any(axis=1).all(), "a prompt vector is not an embedding row"
  return matches.argmax(axis=1)


def test_random_uniform(embedding):
  prompt = prompts.init_prompt(jax.random.key(0), prompts.random_uniform(), embedding, 20)
  assert prompt.shape == (20, 4) and prompt.dtype == jnp.float32
  assert float(prompt.min()) >= -0.5 and float(prompt.max()) <= 0.5 and float(prompt.max()) > 0.3
  other = prompts.random_uniform(scale=2.0)(jax.random.key(1), embedding, 20)
  assert float(jnp.abs(other).max()) > 0.5


def test_sampled_vocab_draws_distinct_common_non_special_tokens(embedding):
  prompt = prompts.init_prompt(jax.random.key(0), prompts.sampled_vocab(), embedding, 50)
  ids = _row_ids(prompt, embedding)
  assert len(set(ids)) == 50 and ids.min() >= 3 and ids.max() < 5000
  # Fewer candidates than positions: drawn with replacement, still from ids 3..9.
  ids = _row_ids(prompts.sampled_vocab(num_common=10)(jax.random.key(1), embedding, 20), embedding)
  assert ids.min() >= 3 and ids.max() < 10 and len(set(ids)) > 1
  with pytest.raises(ValueError, match="raise num_common"):
    prompts.sampled_vocab(num_common=3)(jax.random.key(0), embedding, 5)


def test_class_labels_average_multi_piece_labels_and_fill_with_sampled_vocab(embedding, vocabulary):
  init = prompts.class_labels(["positive", "negative", "entailment"], vocabulary)
  prompt = prompts.init_prompt(jax.random.key(0), init, embedding, 6)
  np.testing.assert_array_equal(prompt[0], embedding[POSITIVE])
  np.testing.assert_array_equal(prompt[1], embedding[NEGATIVE])
  np.testing.assert_allclose(prompt[2], embedding[np.array(ENTAILMENT)].mean(axis=0), rtol=1e-6)
  ids = _row_ids(prompt[3:], embedding)
  assert ids.min() >= 3 and ids.max() < 5000
  uniform = prompts.class_labels(["positive"], vocabulary, fallback=prompts.random_uniform(0.01))
  assert float(jnp.abs(uniform(jax.random.key(0), embedding, 3)[1:]).max()) <= 0.01
  with pytest.raises(ValueError, match="3 class labels do not fit a prompt of length 2"):
    init(jax.random.key(0), embedding, 2)
  with pytest.raises(ValueError, match="encodes to no tokens"):
    prompts.class_labels([""], vocabulary)(jax.random.key(0), embedding, 2)
  with pytest.raises(ValueError, match="beyond the embedding table"):
    prompts.class_labels(["positive"], vocabulary)(jax.random.key(0), embedding[:1000], 2)


def test_from_text_cuts_or_repeats(embedding, vocabulary):
  ids = vocabulary.encode("Classify this:")  # 4 pieces
  long = prompts.from_text("Classify this:", vocabulary)(jax.random.key(0), embedding, 6)
  np.testing.assert_array_equal(_row_ids(long, embedding), ids + ids[:2])
  short = prompts.from_text("Classify this:", vocabulary)(jax.random.key(0), embedding, 3)
  np.testing.assert_array_equal(_row_ids(short, embedding), ids[:3])


def test_from_file_reads_the_reference_npy_and_checks_the_backbone(reference_dir):
  path = reference_dir / "prompt_5x256.npy"
  wide = jnp.zeros((10, 256))
  prompt = prompts.init_prompt(jax.random.key(0), prompts.from_file(path), wide, 5)
  assert prompt.dtype == jnp.float32
  np.testing.assert_allclose(prompt, np.load(path).astype(np.float32))
  with pytest.raises(ValueError, match="has 5 vectors but the prompt length is 4: set PROMPT_LENGTH = 5"):
    prompts.from_file(path)(jax.random.key(0), wide, 4)
  with pytest.raises(ValueError, match="width 256, but the backbone embeds tokens in 4 dimensions"):
    prompts.from_file(path)(jax.random.key(0), jnp.zeros((10, 4)), 5)


def test_prompt_file_formats(tmp_path):
  prompt = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
  for name in ("p.npy", "p.safetensors"):
    prompt_files.save_prompt_file(tmp_path / name, prompt)
    np.testing.assert_array_equal(prompts.load_prompt_file(tmp_path / name, embed_dim=8), prompt)
  # A training step folder, and a MODEL_DIR whose latest numpy checkpoint wins.
  for step, scale in ((10, 1.0), (200, 2.0), (30, 3.0)):
    folder = tmp_path / "run" / "numpy_checkpoints" / f"checkpoint_{step}"
    folder.mkdir(parents=True)
    np.save(folder / "prompt.npy", prompt * scale)
  np.testing.assert_array_equal(prompts.load_prompt_file(tmp_path / "run"), prompt * 2.0)
  step_folder = tmp_path / "run" / "numpy_checkpoints" / "checkpoint_30"
  np.testing.assert_array_equal(prompts.load_prompt_file(step_folder), prompt * 3.0)


def test_prompt_file_errors(tmp_path):
  from safetensors.numpy import save_file

  np.save(tmp_path / "ints.npy", np.ones((3, 4), np.int64))
  np.save(tmp_path / "cube.npy", np.ones((2, 3, 4), np.float32))
  np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
  save_file({"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.float32)}, str(tmp_path / "two.safetensors"))
  (tmp_path / "prompt.txt").write_text("0.1 0.2")
  (tmp_path / "empty").mkdir()
  cases = {
    "ints.npy": "holds int64 values",
    "cube.npy": r"shape \(2, 3, 4\); a prompt is \[P, D\]",
    "nan.npy": "NaN",
    "two.safetensors": "expected a single tensor or one named prompt",
    "prompt.txt": "unknown extension '.txt'",
    "empty": "holds no prompt",
  }
  for name, message in cases.items():
    with pytest.raises(ValueError, match=message):
      prompts.load_prompt_file(tmp_path / name)
  with pytest.raises(FileNotFoundError, match="no prompt at"):
    prompts.load_prompt_file(tmp_path / "missing.npy")


def test_init_prompt_checks_what_the_initializer_returns(embedding):
  with pytest.raises(ValueError, match=r"returned shape \(3, 5\); expected \(3, 4\)"):
    prompts.init_prompt(jax.random.key(0), lambda rng, emb, n: jnp.zeros((n, 5)), embedding, 3)
  with pytest.raises(ValueError, match="holds floats"):
    prompts.init_prompt(jax.random.key(0), lambda rng, emb, n: jnp.zeros((n, 4), jnp.int32), embedding, 3)
  with pytest.raises(ValueError, match="PROMPT_LENGTH"):
    prompts.random_uniform()(jax.random.key(0), embedding, 0)


def test_initializers_are_gin_configurable(embedding):
  try:
    gin.parse_config(
      [
        "prompt_tuning.prompts.sampled_vocab.num_common = 12",
        "prompt_tuning.prompts.class_labels.fallback = @prompt_tuning.prompts.sampled_vocab()",
      ]
    )
    ids = _row_ids(prompts.sampled_vocab()(jax.random.key(0), embedding, 5), embedding)
    assert ids.max() < 12
  finally:
    gin.clear_config()
