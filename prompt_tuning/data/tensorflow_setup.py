"""Keeps TensorFlow, which only runs the input pipelines here, quiet and off the accelerators.

JAX owns the GPUs/TPUs; if TensorFlow saw them it would reserve their memory for itself. Import this module before
anything else imports TensorFlow (the package `__init__` does).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Must be set before TensorFlow is first imported.

import tensorflow as tf  # noqa: E402


def hide_accelerators_from_tensorflow() -> None:
  """Makes TensorFlow use the CPU only; a no-op once TensorFlow has initialized its devices."""
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # Devices already initialized (or no such kind): nothing we can change now.


def limit_tensorflow_threads(num_threads: int) -> None:
  """Caps TensorFlow's op thread pools (tests, small machines); a no-op once TensorFlow has started running ops."""
  try:
    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    tf.config.threading.set_inter_op_parallelism_threads(num_threads)
  except RuntimeError:
    pass
