"""Evaluation: teacher-forced loss, seqio metrics through decoding, and class-label scoring.

    prompt-tuning eval --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'"

The tuned vectors come from the latest checkpoint in MODEL_DIR (or, with none,
from the prompt initializer, e.g. `prompts.from_file`), the frozen backbone
from INITIAL_CHECKPOINT_PATH, exactly as at the start of training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import gin
import jax
import numpy as np

from prompt_tuning import decoding, distributed, inputs, optim, partitioning, validation
from prompt_tuning.run import RunConfig, build_inference


def teacher_forced(
  run, task_name: str, lengths: Mapping[str, int], batch_size: int, split: str, max_batches=None, pack: bool = False
):
  """Token-weighted mean loss and token accuracy, and the fraction of target sequences right in every token
  (`sequence_accuracy`), over a split; on packed batches when `pack` (the same numbers, up to float rounding, in
  fewer rows)."""
  local = partitioning.local_batch_size(batch_size, run.mesh)
  totals: dict[str, float] = {}
  batches = inputs.eval_batches(
    task_name,
    lengths,
    local,
    config=run.tuned.config,
    split=split,
    max_batches=max_batches,
    pack=pack,
    prompt_slots=run.tuned.prompt_length,
    task_count=run.tuned.task_count,
  )
  bucketed = jax.process_count() == 1  # Processes must agree on shapes; one process may trim its own.
  for batch in distributed.equal_batch_counts(batches):  # Uneven shards: the shorter ones pad with empty batches.
    batch = inputs.trim_to_buckets(batch) if bucketed else batch
    metrics = jax.device_get(run.eval_step(run.trainable, run.frozen, partitioning.shard_batch(batch, run.mesh)))
    tokens, sequences = float(metrics["num_tokens"]), float(metrics["num_sequences"])
    for key in ("loss", "cross_entropy", "accuracy"):
      totals[key] = totals.get(key, 0.0) + float(metrics[key]) * tokens
    totals["sequences_correct"] = totals.get("sequences_correct", 0.0) + float(metrics["sequence_accuracy"]) * sequences
    totals["num_tokens"] = totals.get("num_tokens", 0.0) + tokens
    totals["num_sequences"] = totals.get("num_sequences", 0.0) + sequences
  count = max(totals.pop("num_tokens", 0.0), 1.0)
  sequences = totals.pop("num_sequences", 0.0)
  right = totals.pop("sequences_correct", 0.0)
  return {k: v / count for k, v in totals.items()} | {
    "sequence_accuracy": right / max(sequences, 1.0),
    "num_tokens": count,
    "num_sequences": sequences,
  }


class Predictor:
  """Decodes and scores with an inference build (`run.build_inference`): its folded trainable tree and frozen
  backbone, the adapters computed once.

  With `bucket_lengths` (the default in a single-process run) the examples go in sorted by length and each
  batch is trimmed to a power-of-two bucket length (`inputs.trim_to_buckets`): a bounded set of compiled shapes,
  the same predictions and scores as full-length batches, less padding computed.

  A multi-task run (`TunedT5.task_count`) gives each row its task's vectors, the task read from the sentinel the
  row's input opens with, as in training (`inputs.task_ids`); `vocab_size` (the task's vocabulary, its sentinels'
  top) is then required.

  A run trained with `RunConfig.class_label_softmax` decodes over the same ids its softmax was trained on (the
  labels' tokens and EOS, `run.output_ids`): such a run learns to rank the labels among themselves, not above the
  rest of the vocabulary, so decoded over the whole vocabulary it answers with its pretraining's sentinels and
  scores 0 on every label metric however well it ranks them.
  """

  def __init__(
    self,
    run,
    settings: decoding.DecodingSettings,
    batch_size: int,
    bucket_lengths: bool | None = None,
    vocab_size: int | None = None,
  ):
    self.run, self.settings, self.batch_size = run, settings, batch_size
    self.bucket_lengths = jax.process_count() == 1 if bucket_lengths is None else bucket_lengths
    self._params = optim.merge(run.trainable, run.frozen)
    self._task_count, self._vocab_size = run.tuned.task_count, vocab_size
    if self._task_count and vocab_size is None:
      raise ValueError("a multi-task run's Predictor reads each row's task sentinel: give it the task's vocab_size.")
    # Per batch where the vectors depend on the rows' tasks or inputs; once otherwise.
    self._per_batch = bool(self._task_count) or run.tuned.reads_inputs
    self._adapters = None if self._per_batch else run.tuned.adapters(self._params)

  def _task_ids(self, encoder_input_tokens: np.ndarray) -> np.ndarray:
    batch = {"encoder_input_tokens": np.asarray(encoder_input_tokens)}
    return inputs.task_ids(batch, self._vocab_size, self._task_count)

  def generate(self, encoder_input_tokens: np.ndarray) -> np.ndarray:
    tuned = self.run.tuned
    adapters = self._adapters
    if self._per_batch:
      task_ids = jax.numpy.asarray(self._task_ids(encoder_input_tokens)) if self._task_count else None
      adapters = tuned.adapters(self._params, task_ids, encoder_input_tokens)
    out = decoding.generate(
      tuned.config,
      self._params["t5"],
      encoder_input_tokens,
      adapters=adapters,
      prompt_combination=tuned.prompt_combination,
      settings=self.settings,
      output_ids=self.run.output_ids,  # a class_label_softmax run decodes over what its softmax was trained on
    )
    return np.asarray(jax.device_get(out.tokens))

  def score(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """log p(decoder_target_tokens | inputs) per row."""
    if self._task_count:
      batch = {**batch, "task_ids": self._task_ids(batch["encoder_input_tokens"])}
    batch = partitioning.shard_batch(batch, self.run.mesh)
    return np.asarray(jax.device_get(self.run.score_step(self.run.trainable, self.run.frozen, batch)))

  def _batches(self, dataset):
    """(indices, features, real rows) in padded batches from a seqio-enumerated dataset."""
    if self.bucket_lengths:
      examples = [(int(index), dict(features)) for index, features in dataset.as_numpy_iterator()]
      yield from inputs.by_length_batches(examples, self.batch_size)
      return
    for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
      rows = len(indices)
      yield indices, inputs.pad_rows(dict(features), self.batch_size), rows

  def predict_fn(self, dataset) -> list[tuple[int, list[int]]]:
    """(index, predicted ids) per example, every row padded with 0 to the longest: seqio stacks the predictions
    into one array (`np.array`, which refuses rows of different lengths), and its decoding drops the padding."""
    results = []
    for indices, features, rows in self._batches(dataset):
      tokens = self.generate(features["encoder_input_tokens"])[:rows]
      results.extend((int(i), [int(t) for t in row if t > 0]) for i, row in zip(indices, tokens))
    width = max((len(ids) for _, ids in results), default=0)
    return [(i, ids + [0] * (width - len(ids))) for i, ids in results]

  def score_fn(self, dataset) -> list[tuple[int, float]]:
    results = []
    for indices, features, rows in self._batches(dataset):
      scores = self.score(features)[:rows]
      results.extend((int(i), float(s)) for i, s in zip(indices, scores))
    return results


def seqio_metrics(
  run,
  task_name: str,
  lengths: Mapping[str, int],
  split: str,
  settings: decoding.DecodingSettings,
  batch_size: int,
  num_examples: int | None = None,
) -> dict[str, float]:
  """The task's own seqio metrics (accuracy, F1, ...) on decoded predictions."""
  import seqio

  evaluator = seqio.Evaluator(
    mixture_or_task_name=task_name,
    feature_converter=inputs.model_converter(run.tuned.config),
    eval_split=split,
    sequence_length=dict(lengths),
    num_examples=num_examples,
    async_compute_metrics=False,
  )
  if not evaluator.eval_tasks:
    return {}
  vocab_size = inputs.vocab_size_of(task_name) if run.tuned.task_count else None  # a multi-task run's sentinels
  predictor = Predictor(run, settings, batch_size, vocab_size=vocab_size)
  future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predictor.predict_fn, score_fn=predictor.score_fn)
  flat = {}
  for task, metrics in future.result().items():
    for name, value in metrics.items():
      value = getattr(value, "value", value)
      if isinstance(value, (int, float, np.floating, np.integer)):
        flat[f"{task}/{name}"] = float(value)
  return flat


@gin.configurable
def evaluate(
  run_config=None,
  split: str = "validation",
  decoding_settings: decoding.DecodingSettings = decoding.DecodingSettings(),
  num_examples: int | None = None,
) -> dict[str, float]:
  """Loss and seqio metrics of the tuned model on a split; appended to MODEL_DIR/eval_metrics.jsonl."""
  cfg = run_config if run_config is not None else RunConfig()
  validation.check_num_examples(num_examples, "evaluate.num_examples")
  validation.check_split(cfg.mixture_or_task_name, split, "evaluate.split")
  validation.check_has_checkpoint(cfg, validation.newest_checkpoint_step(cfg.model_dir), "evaluate")
  run = build_inference(cfg)
  metrics = teacher_forced(
    run, cfg.mixture_or_task_name, cfg.task_feature_lengths, cfg.batch_size, split, pack=cfg.pack
  )
  metrics |= seqio_metrics(
    run, cfg.mixture_or_task_name, cfg.task_feature_lengths, split, decoding_settings, cfg.batch_size, num_examples
  )
  if jax.process_index() == 0:
    from prompt_tuning import storage

    if not storage.is_remote(cfg.model_dir):
      Path(cfg.model_dir).mkdir(parents=True, exist_ok=True)
    record = json.dumps({"step": run.step, "split": split, **metrics}) + "\n"
    storage.append_text(storage.path(cfg.model_dir) / "eval_metrics.jsonl", record)
  return metrics
