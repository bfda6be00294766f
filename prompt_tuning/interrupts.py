"""Ctrl-C during a command, not lost in a callback.

Python raises KeyboardInterrupt wherever the main thread is; inside a callback (JAX's garbage-collection callback, a
__del__) it is printed as "Exception ignored" and lost, and a run trained on after its Ctrl-C (seen in
tests/test_faults_sweeps.py's Ctrl-C test). While a command runs (`prompt_tuning.command.run`), the handler here
also remembers it, and long loops call `raise_if_interrupted` at points where nothing swallows it (the train loop,
after every step).
"""

from __future__ import annotations

import contextlib
import signal
import threading

_interrupted = threading.Event()


def _on_sigint(number, frame) -> None:
  _interrupted.set()
  signal.default_int_handler(number, frame)


def raise_if_interrupted() -> None:
  """Raises KeyboardInterrupt if Ctrl-C came during this command (also when its first KeyboardInterrupt was lost)."""
  if _interrupted.is_set():
    raise KeyboardInterrupt


@contextlib.contextmanager
def remembering_ctrl_c():
  """`_on_sigint` for SIGINT while a command runs, where Python's own handler is installed (not where SIGINT is
  ignored or handled otherwise, nor off the main thread); the previous handler and no remembered Ctrl-C after."""
  ours = threading.current_thread() is threading.main_thread()
  ours = ours and signal.getsignal(signal.SIGINT) is signal.default_int_handler
  if ours:
    signal.signal(signal.SIGINT, _on_sigint)
  try:
    yield
  finally:
    if ours:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    _interrupted.clear()
