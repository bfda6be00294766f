"""What a user sees while training: a progress bar, metrics.jsonl and TensorBoard summaries."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
from tqdm import tqdm


def drop_records_after(path: Path, step: int) -> None:
  """Removes the records of steps after `step` from a metrics.jsonl: a resumed run writes them again.

  A run killed after step 7 but checkpointed at 4 resumes at 4 and logs 5-7 anew; without this each would appear
  twice. Lines that do not parse are kept as they are.
  """
  if not path.is_file():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record_step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
      record_step = None
    if not isinstance(record_step, int) or record_step <= step:
      kept.append(line)
  if len(kept) != len(lines):
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class Reporter:
  """Progress bar (step, loss, tokens/s, ETA), MODEL_DIR/metrics.jsonl, TensorBoard events.

  Only process 0 writes or prints; other processes stay quiet.
  """

  def __init__(self, model_dir: str | os.PathLike, total_steps: int, start_step: int = 0):
    self.primary = jax.process_index() == 0
    self.path = Path(model_dir) / "metrics.jsonl"
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

      self._writer = metric_writers.SummaryWriter(str(Path(model_dir) / "tensorboard"))

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
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "time": time.time(), **named}) + "\n")
    self._writer.write_scalars(int(step), named)

  def close(self) -> None:
    self._bar.close()
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
