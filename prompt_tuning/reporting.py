"""What a user sees while training: a progress bar, metrics.jsonl and TensorBoard summaries."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import jax
from tqdm import tqdm

from prompt_tuning import storage

log = logging.getLogger(__name__)


def drop_records_after(path, step: int) -> None:
  """Removes the records of steps after `step` from a metrics.jsonl: a resumed run writes them again.

  A run killed after step 7 but checkpointed at 4 resumes at 4 and logs 5-7 anew; without this each would appear
  twice. Other lines that do not parse (or are not UTF-8) are kept byte for byte, with a warning naming the file and
  line; a torn last line (a write cut short by the kill, no newline at its end) is removed, so that the next record
  starts a line of its own.
  """
  if not path.is_file():
    return
  lines = path.read_bytes().splitlines(keepends=True)
  kept, unreadable = [], []
  for number, line in enumerate(lines, 1):
    if not line.endswith(b"\n") and number == len(lines):
      try:
        json.loads(line)
      except (UnicodeDecodeError, json.JSONDecodeError):
        log.warning("%s line %d is a torn record (cut short by a kill); removed: %r", path, number, line[:80])
        continue
      line += b"\n"
    try:
      record_step = json.loads(line).get("step")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
      record_step = None
      if line.strip():
        unreadable.append(number)
    if not isinstance(record_step, int) or record_step <= step:
      kept.append(line)
  if unreadable:
    log.warning(
      "%s has %d line(s) that are not JSON records in UTF-8 (line %s%s); kept as they are, and skipped by readers.",
      path,
      len(unreadable),
      unreadable[0],
      ", ..." if len(unreadable) > 1 else "",
    )
  if kept != lines:
    storage.write_bytes(path, b"".join(kept))


class Reporter:
  """Progress bar (step, loss, tokens/s, ETA), MODEL_DIR/metrics.jsonl, TensorBoard events.

  Only process 0 writes or prints; other processes stay quiet. For a gs:// MODEL_DIR, TensorBoard's events are
  written to a local staging folder and uploaded to MODEL_DIR/tensorboard at every write (TensorBoard reads them
  from the bucket): the summary writer writes through TensorFlow's file system, which `storage` does not use.
  """

  def __init__(self, model_dir: str | os.PathLike, total_steps: int, start_step: int = 0):
    self.primary = jax.process_index() == 0
    self.path = storage.path(model_dir) / "metrics.jsonl"
    self._events = storage.path(model_dir) / "tensorboard"
    self._staging = None
    if self.primary:
      drop_records_after(self.path, start_step)
    self._bar = tqdm(
      total=total_steps,
      initial=start_step,
      desc="train",
      unit="step",
      disable=not self.primary,
      dynamic_ncols=True,
      file=sys.stderr,
    )
    self._writer = None
    if self.primary:
      from clu import metric_writers

      events = self._events
      if storage.is_remote(events):
        import tempfile

        self._staging = tempfile.TemporaryDirectory(prefix="prompt_tuning_tensorboard_")
        events = Path(self._staging.name)
      self._writer = metric_writers.SummaryWriter(str(events))

  def text(self, message: str) -> None:
    if self.primary:
      tqdm.write(message, file=sys.stderr)

  def step(self, step: int, loss: float, tokens_per_second: float) -> None:
    self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
    self._bar.update(step - self._bar.n)

  def scalars(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
    if not self.primary:
      return
    named = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    storage.append_text(self.path, json.dumps({"step": int(step), "time": time.time(), **named}) + "\n")
    self._writer.write_scalars(int(step), named)
    self._upload_events()

  def _upload_events(self) -> None:
    if self._staging is not None and storage.lost() is None:
      self._writer.flush()
      storage.upload_folder(self._staging.name, self._events)

  def close(self) -> None:
    self._bar.close()
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
      self._upload_events()
      if self._staging is not None:
        self._staging.cleanup()
        self._staging = None
