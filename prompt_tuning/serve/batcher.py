"""The batcher: one thread that owns the engine and turns queued requests into batches.

Requests of every prompt, prompt length and method share batches (each row
carries its own vectors, `prompt_tuning.serve.engine`). Greedy and sampling
requests decode in slots with continuous batching: after every call of the
engine's step the finished slots are freed and the waiting requests are
admitted (encoded once, written into the free slots) before the next. A call
runs one decoder step after an admission and twice as many as the last
while no request arrives (up to `EngineShapes.max_steps_per_call`): requests
arriving together are admitted together, and a long generation costs a few
round trips to the host rather than one per token. While requests wait for a
slot, a call stops after the first step that frees one, so they are admitted
at the next step as with one step per call. `whole_batch=True`
is the baseline the benchmark compares with (dynamic batching): a new batch
is admitted only once every slot of the previous one has finished.

Beam search and scoring run whole batches between decoding steps. An
exception inside a batch fails that batch's requests only, and the loop goes
on; non-finite outputs (NaN arising in one row's computation, e.g. from a
prompt of huge values) fail only the requests of the rows they appear in, with
an error naming the prompt.

Requests hold the library entry they were submitted with, so a prompt
deleted or replaced while they run does not change them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Any

import jax
import numpy as np

from prompt_tuning.serve.engine import Engine, EngineError, bucket
from prompt_tuning.serve.metrics import ServeMetrics
from prompt_tuning.serve.store import DeviceCache, PromptEntry

log = logging.getLogger(__name__)


class ShuttingDown(RuntimeError):
  """A request submitted after the server began to stop (the app answers 503)."""


@dataclasses.dataclass(eq=False)
class GenerateJob:
  """One generation request: int tokens [T] (EOS included) under `entry` (None: the frozen model)."""

  tokens: np.ndarray
  entry: PromptEntry | None
  method: str = "greedy"
  max_decode_length: int = 32
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
  submitted: float = dataclasses.field(default_factory=time.perf_counter)
  output: list[int] = dataclasses.field(default_factory=list)
  logp: float = 0.0


@dataclasses.dataclass(eq=False)
class ScoreJob:
  """log p(candidate | input, prompt) for every prompt (entries) and candidate: one input's rows."""

  tokens: np.ndarray
  entries: list[PromptEntry | None]
  candidates: np.ndarray  # int [C, max_target_length]
  output_ids: tuple[int, ...] | None = None  # class_label_softmax: the ids the softmax normalizes over
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
  submitted: float = dataclasses.field(default_factory=time.perf_counter)

  @property
  def rows(self) -> int:
    return len(self.entries) * len(self.candidates)


class Batcher:
  """Owns the engine's device state; `submit` from any thread, results through each job's future."""

  def __init__(
    self, engine: Engine, cache: DeviceCache, metrics: ServeMetrics, whole_batch: bool = False, seed: int = 0
  ):
    self.engine, self.cache, self.metrics, self.whole_batch = engine, cache, metrics, whole_batch
    self._queue: queue.Queue = queue.Queue()
    self._waiting: list[GenerateJob] = []
    self._beams: list[GenerateJob] = []
    self._scores: list[ScoreJob] = []
    self._slots: list[GenerateJob | None] = [None] * engine.shapes.slots
    self._state = None
    self._rng = jax.random.key(seed)
    self._steps = 0
    self._call_steps = 1  # decoder steps the next call runs: 1 after an admission, then doubling (module docstring)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="serve-batcher", daemon=True)

  # ---------------------------------------------------------------------------
  # Public API.

  def start(self) -> None:
    self._state = self.engine.init_state()
    self._thread.start()

  def submit(self, job: GenerateJob | ScoreJob) -> concurrent.futures.Future:
    if self._stop.is_set():
      job.future.set_exception(ShuttingDown("the server is shutting down; send the request again to another replica."))
    else:
      self._queue.put(job)
      self.metrics.queue_depth.inc()
    return job.future

  def stop(self, timeout: float = 60.0) -> None:
    """Finishes the queued and running requests, then stops the thread."""
    self._stop.set()
    self._queue.put(None)
    self._thread.join(timeout)

  # ---------------------------------------------------------------------------
  # The loop.

  def _busy(self) -> bool:
    return bool(self._waiting or self._beams or self._scores or any(self._slots))

  def _take(self, block: bool) -> None:
    """Moves queued jobs to the waiting lists; blocks for the first when there is nothing to do."""
    while True:
      try:
        job = self._queue.get(block=block, timeout=0.05 if block else None)
      except queue.Empty:
        return
      block = False
      if job is None:
        continue
      self.metrics.queue_depth.dec()
      if isinstance(job, ScoreJob):
        self._scores.append(job)
      elif job.method == "beam":
        self._beams.append(job)
      else:
        self._waiting.append(job)

  def _run(self) -> None:
    while True:
      self._take(block=not self._busy())
      if self._stop.is_set() and not self._busy() and self._queue.empty():
        return
      try:
        if self._scores:
          self._run_scores()
        if self._beams:
          self._run_beams()
        self._admit()
        if any(self._slots):
          self._step()
      except Exception:  # noqa: BLE001 - the loop must outlive any batch; the batch's jobs got the error
        log.exception("batcher: a batch failed")

  def _vectors(self, entry: PromptEntry | None):
    if entry is None:
      return self.engine.row_vectors(None)
    hits = self.cache.hits
    vectors = self.cache.get(entry)
    self.metrics.prompt_cache.labels("hit" if self.cache.hits > hits else "miss").inc()
    return vectors

  @staticmethod
  def _non_finite(what: str, entries) -> EngineError:
    """The error of a request whose outputs came back NaN or infinite, naming its prompts."""
    names = [f"{e.prompt_id!r} (version {e.version})" if e else "none (the frozen model)" for e in entries]
    return EngineError(
      f"the model computed non-finite {what} for this request under prompt {', '.join(names)}: its vectors drive "
      "the computation out of float range (huge values?); replace the prompt. The other requests were not affected."
    )

  @staticmethod
  def _fail(jobs, error: Exception) -> None:
    for job in jobs:
      if not job.future.done():
        job.future.set_exception(error)

  def _finish(self, job, result: dict[str, Any], kind: str) -> None:
    self.metrics.latency.labels(kind).observe(time.perf_counter() - job.submitted)
    if not job.future.done():
      job.future.set_result(result)

  # ---------------------------------------------------------------------------
  # Continuous batching (greedy, sampling).

  def _admit(self) -> None:
    free = [i for i, job in enumerate(self._slots) if job is None]
    if not self._waiting or not free or (self.whole_batch and len(free) < len(self._slots)):
      return
    take = min(len(free), len(self._waiting), self.engine.shapes.admit_buckets[-1])
    jobs, self._waiting = self._waiting[:take], self._waiting[take:]
    slot_ids = free[:take]
    length = bucket(max(len(j.tokens) for j in jobs), self.engine.shapes.input_buckets)
    tokens = np.zeros((take, length), np.int32)
    for i, job in enumerate(jobs):
      tokens[i, : len(job.tokens)] = job.tokens
    settings = {
      "max_length": np.array([j.max_decode_length for j in jobs], np.int32),
      "temperature": np.array([j.temperature if j.method == "sample" else 0.0 for j in jobs], np.float32),
      "top_k": np.array([j.top_k for j in jobs], np.int32),
      "top_p": np.array([j.top_p for j in jobs], np.float32),
    }
    try:
      rows = [self._vectors(j.entry) for j in jobs]
      # Waited for: dispatched alone, the admission's compute would land in the next step's time on /metrics.
      with self.metrics.engine_seconds.labels("admit").time():
        self._state = jax.block_until_ready(self.engine.admit(self._state, slot_ids, tokens, rows, settings))
    except Exception as e:  # noqa: BLE001
      self._fail(jobs, e)
      self._recover(e)
      raise
    for slot, job in zip(slot_ids, jobs):
      self._slots[slot] = job
    self._call_steps = 1
    self.metrics.batch_size.labels("admit").observe(take)

  def _recover(self, error: Exception) -> None:
    """After a failed program: if the donated state is gone, the running jobs fail and the slots start empty."""
    leaves = jax.tree.leaves(self._state)
    if any(getattr(x, "is_deleted", lambda: False)() for x in leaves):
      self._fail([j for j in self._slots if j], error)
      self._slots = [None] * len(self._slots)
      self._state = self.engine.init_state()

  def _step(self) -> None:
    running = [j for j in self._slots if j]
    # A request queued since this loop's _take is admitted before a longer call; waiting ones as soon as a slot frees.
    steps = 1 if not self._queue.empty() else self._call_steps
    stop_on_finish = bool(self._waiting) and not self.whole_batch
    try:
      slots = [i for i, job in enumerate(self._slots) if job is not None]
      with self.metrics.engine_seconds.labels("step").time():
        self._state, self._rng, out = self.engine.step(self._state, self._rng, steps, stop_on_finish, slots)
    except Exception as e:  # noqa: BLE001
      self._fail(running, e)
      self._slots = [None] * len(self._slots)
      self._state = self.engine.init_state()
      raise
    self._call_steps = min(2 * steps, self.engine.shapes.max_steps_per_call)
    for step in range(len(out["token"])):
      running = [i for i, job in enumerate(self._slots) if job is not None]
      if not running:
        break
      self._steps += 1
      self.metrics.batch_size.labels("step").observe(len(running))
      self.metrics.generated_tokens.inc(len(running))
      for i in running:
        job = self._slots[i]
        if not out["finite"][step, i]:
          self._fail([job], self._non_finite("logits", [job.entry]))
          self._slots[i] = None
          continue
        job.output.append(int(out["token"][step, i]))
        job.logp += float(out["logp"][step, i])
        if out["done"][step, i]:
          self._slots[i] = None
          self._finish(job, {"token_ids": job.output, "score": job.logp}, job.method)

  # ---------------------------------------------------------------------------
  # Whole batches: beam search and scoring.

  def _run_beams(self) -> None:
    width = self._beams[0].num_beams
    group = [j for j in self._beams if j.num_beams == width][: self.engine.shapes.beam_buckets[-1]]
    taken = {id(j) for j in group}
    self._beams = [j for j in self._beams if id(j) not in taken]
    length = bucket(max(len(j.tokens) for j in group), self.engine.shapes.input_buckets)
    tokens = np.zeros((len(group), length), np.int32)
    for i, job in enumerate(group):
      tokens[i, : len(job.tokens)] = job.tokens
    try:
      rows = [self._vectors(j.entry) for j in group]
      with self.metrics.engine_seconds.labels("beam").time():
        out, scores = self.engine.beam(tokens, rows, width)
    except Exception as e:  # noqa: BLE001
      self._fail(group, e)
      raise
    self.metrics.batch_size.labels("beam").observe(len(group))
    for job, row, score in zip(group, out, scores):
      if not np.isfinite(score):
        self._fail([job], self._non_finite("beam scores", [job.entry]))
        continue
      ids = [int(t) for t in row]
      ids = ids[: ids.index(1) + 1] if 1 in ids else [t for t in ids if t]
      self.metrics.generated_tokens.inc(len(ids))
      self._finish(job, {"token_ids": ids, "score": float(score)}, "beam")

  def _run_scores(self) -> None:
    limit = self.engine.shapes.score_buckets[-1]
    batch, rows = [], 0
    while self._scores and rows + self._scores[0].rows <= limit:
      job = self._scores.pop(0)
      batch.append(job)
      rows += job.rows
    length = bucket(max(len(j.tokens) for j in batch), self.engine.shapes.input_buckets)
    tokens, targets, vectors, allowed = [], [], [], []
    vocab = self.engine.config.vocab_size
    try:
      for job in batch:
        ids = np.ones(vocab, bool)
        if job.output_ids is not None:
          ids = np.zeros(vocab, bool)
          ids[list(job.output_ids)] = True
        for entry in job.entries:
          row = self._vectors(entry)
          for candidate in job.candidates:
            tokens.append(np.pad(job.tokens, (0, length - len(job.tokens))))
            targets.append(candidate)
            vectors.append(row)
            allowed.append(ids)
      tokens, targets = np.stack(tokens).astype(np.int32), np.stack(targets).astype(np.int32)
      with self.metrics.engine_seconds.labels("score").time():
        logp = self.engine.score(tokens, targets, vectors, np.stack(allowed))
    except Exception as e:  # noqa: BLE001
      self._fail(batch, e)
      raise
    self.metrics.batch_size.labels("score").observe(rows)
    start = 0
    for job in batch:
      n = job.rows
      log_probs = logp[start : start + n].reshape(len(job.entries), len(job.candidates))  # [K, C]
      start += n
      bad = [e for e, row in zip(job.entries, log_probs) if not np.all(np.isfinite(row))]
      if bad:
        self._fail([job], self._non_finite("log-probabilities", bad))
      else:
        self._finish(job, {"log_probs": log_probs}, "score")
