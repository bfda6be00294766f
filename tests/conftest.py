"""Shared test set-up: quiet TensorFlow, CPU only, the reference artifacts."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# ../shared/reference beside the project root: real artifacts made by other
# tools (T5X, SentencePiece). A user's checkout has no ../shared; CI always does.
REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_in_tmp(tmp_path_factory):
  """Commands the tests start cache compiled programs under pytest's temporary folder, not the user's ~/.cache."""
  os.environ.setdefault("PROMPT_TUNING_COMPILATION_CACHE", str(tmp_path_factory.mktemp("jax_compilation_cache")))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
  if not REFERENCE_DIR.is_dir():
    pytest.skip(f"reference artifacts not found at {REFERENCE_DIR} (they sit beside the project in CI)")
  return REFERENCE_DIR


@pytest.fixture(scope="session")
def vocabulary(reference_dir):
  """The real T5 SentencePiece vocabulary (32,000 pieces + 100 sentinels)."""
  seqio = pytest.importorskip("seqio")
  return seqio.SentencePieceVocabulary(str(reference_dir / "t5_spm_32000.model"), extra_ids=100)


@pytest.fixture(scope="session")
def embedding(reference_dir):
  """A real-vocabulary-sized embedding table, float32 [32128, 4]."""
  import numpy as np

  return np.load(reference_dir / "tiny_embeddings_32128x4.npy")


@pytest.fixture(scope="module")
def tiny_decoder_model():
  """(config, params) of a random tiny T5 1.0 with an untied output layer whose pad logit is pinned at 0, below the
  best of the random others, so greedy decoding never emits pad mid-sequence."""
  import jax

  import prompt_tuning as pt

  config = pt.get_config("t5_1_0_tiny", vocab_size=64, mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  params = pt.init_params(config, jax.random.key(3))
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"].at[:, 0].set(0.0)
  return config, params


@pytest.fixture(scope="module")
def batch():
  """(encoder tokens [3, 7], decoder inputs [3, 5], targets [3, 5]) over a 64-token vocabulary, with padding in
  rows 1 (encoder) and 2 (targets). Modules that need another batch define their own."""
  import numpy as np

  rng = np.random.default_rng(0)
  enc = rng.integers(2, 64, (3, 7))
  enc[1, 4:] = 0
  targets = rng.integers(2, 64, (3, 5))
  targets[2, 3:] = 0
  return enc, np.pad(targets[:, :-1], ((0, 0), (1, 0))), targets
