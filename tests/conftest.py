"""Shared test set-up: quiet TensorFlow, CPU only, the reference artifacts."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# ../shared/reference beside the project root: real artifacts made by other
# tools (T5X, SentencePiece). A user's checkout has no ../shared; CI always does.
REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
  if not REFERENCE_DIR.is_dir():
    pytest.skip(f"reference artifacts not found at {REFERENCE_DIR} (they sit beside the project in CI)")
  return REFERENCE_DIR
