"""Quiet start-up: TensorFlow's, XLA's and absl's start-up lines hidden unless --verbose (every command, the demo).

`cli` calls `quiet_start_up` before a command runs; `demo` does the same for `python -m prompt_tuning.demo`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def native_stderr_hidden():
  """Sends what native code writes to file descriptor 2 to /dev/null for the duration (Python's exceptions still
  propagate, and are printed after it)."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def quiet_start_up(touch_devices: bool = True) -> None:
  """Hides TensorFlow's, XLA's and absl's start-up lines unless --verbose: "oneDNN custom operations are on", "Could
  not find cuda drivers", "failed call to cuInit", "All log messages before absl::InitializeLog()". They say nothing
  is wrong, and look like failures. TensorFlow 2.21 writes them from C++ whatever TF_CPP_MIN_LOG_LEVEL says, while
  it is imported and when its devices are set up, so both happen here, with native stderr hidden. The gin commands
  pass `touch_devices=False` and set devices up after `jax.distributed` (`start_devices`), which must come first."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  with native_stderr_hidden():
    import tensorflow  # noqa: F401

    from prompt_tuning.data import tensorflow_setup

    tensorflow_setup.hide_accelerators_from_tensorflow()
    if touch_devices:
      start_devices()
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").addFilter(_hide_inapplicable_advice)


# Third-party warnings that do not apply here, hidden unless --verbose: seqio's advice to cache a FunctionDataset
# "since it often results in insufficient shuffling on restarts" (our resumes restore the data pipeline's position
# and seed: a resumed run equals an uninterrupted one, tests/test_method_resume.py).
_INAPPLICABLE_ADVICE = ("Using an uncached FunctionDataset for training",)


def _hide_inapplicable_advice(record: logging.LogRecord) -> bool:
  return not str(record.msg).startswith(_INAPPLICABLE_ADVICE)


def start_devices() -> None:
  """Sets JAX's devices up (call it inside `native_stderr_hidden` to keep XLA's probe quiet)."""
  import jax

  jax.devices()  # XLA's CUDA probe (cuInit) logs here when a CUDA plugin is installed without a GPU
