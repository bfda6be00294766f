"""XLA_FLAGS for a process the tests start with N simulated CPU devices."""

import os


def xla_flags(devices: int) -> str:
  """The suite's own XLA_FLAGS (tests/conftest.py's fast-compile settings) plus `devices` simulated CPU devices."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
