"""Inference: predictions (JSONL, with their inputs) or class-label ranking by log-likelihood.

    prompt-tuning infer --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'" \
      --gin.infer.output_file="'/tmp/run/predictions.jsonl'"

`mode="predict"` decodes each input; `mode="score"` scores every class label
of the task (`prompt_tuning.data.get_class_labels`) and predicts the most
likely one, which never produces an invalid label.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gin
import jax
import numpy as np

from prompt_tuning import decoding, inputs

MODES = ("predict", "score")


def _examples(task_name: str, lengths, split: str, num_examples: int | None) -> Iterator[dict]:
  task = inputs.get_task(task_name)
  ds = task.get_dataset(dict(lengths), split=split, shuffle=False, num_epochs=1)
  if num_examples is not None:
    ds = ds.take(num_examples)
  yield from ds.as_numpy_iterator()


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pad(rows: list[np.ndarray], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, : min(len(row), length)] = row[:length]
  return out


def _label_targets(labels: list[str], vocabulary, length: int) -> np.ndarray:
  """Each label's tokens + EOS, padded to `length` [num_labels, length].

  Raises:
    ValueError: when a label does not fit; cut labels could tie and rank arbitrarily.
  """
  rows = [np.asarray(vocabulary.encode(label) + [vocabulary.eos_id]) for label in labels]
  longest = max(len(row) for row in rows)
  if longest > length:
    raise ValueError(
      f"class label {labels[int(np.argmax([len(r) for r in rows]))]!r} needs {longest} target tokens (EOS included) "
      f"but TASK_FEATURE_LENGTHS['targets'] is {length}; raise it to at least {longest}."
    )
  return _pad(rows, length)


def _score_labels(predictor, encoder_tokens: np.ndarray, label_targets: np.ndarray) -> np.ndarray:
  """log p(label | input) [B, num_labels] (each input repeated once per label)."""
  batch, num_labels = encoder_tokens.shape[0], label_targets.shape[0]
  targets = np.tile(label_targets, (batch, 1))
  features = {
    "encoder_input_tokens": np.repeat(encoder_tokens, num_labels, axis=0),
    "decoder_target_tokens": targets,
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
  }
  return predictor.score(features).reshape(batch, num_labels)


def _chunks(items: list, size: int) -> Iterator[list]:
  for start in range(0, len(items), size):
    yield items[start : start + size]


@gin.configurable
def infer(
  run_config=None,
  split: str = "validation",
  output_file: str | None = None,
  mode: str = "predict",
  decoding_settings: decoding.DecodingSettings = decoding.DecodingSettings(),
  num_examples: int | None = None,
) -> Path:
  """Writes one JSON line per example: inputs, targets, prediction (and label scores in score mode).

  Returns:
    The path written (default MODEL_DIR/inference/<task>_<split>.jsonl).
  """
  from prompt_tuning import eval as evaluation
  from prompt_tuning.run import RunConfig, build_inference

  if mode not in MODES:
    raise ValueError(f"unknown infer mode {mode!r}; use one of {MODES}.")
  cfg = run_config if run_config is not None else RunConfig()
  run = build_inference(cfg)
  task = inputs.get_task(cfg.mixture_or_task_name)
  vocabulary = task.output_features["targets"].vocabulary
  labels = None
  if mode == "score":
    from prompt_tuning.data import get_class_labels

    labels = get_class_labels(cfg.mixture_or_task_name)
    if not labels:
      raise ValueError(f"task {cfg.mixture_or_task_name!r} declares no class labels; use mode='predict'.")
    label_targets = _label_targets(labels, vocabulary, cfg.task_feature_lengths["targets"])
  predictor = evaluation.Predictor(run, decoding_settings, cfg.batch_size)
  path = Path(output_file) if output_file else Path(cfg.model_dir) / "inference" / f"{task.name}_{split}.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  examples = list(_examples(cfg.mixture_or_task_name, cfg.task_feature_lengths, split, num_examples))
  lines = []
  for chunk in _chunks(examples, cfg.batch_size):
    encoder = inputs.pad_rows(
      {"x": _pad([ex["inputs"] for ex in chunk], cfg.task_feature_lengths["inputs"])}, cfg.batch_size
    )["x"]
    if predictor.bucket_lengths:  # A bounded set of compiled shapes, the same results (Predictor's docstring).
      encoder = inputs.trim_to_buckets({"encoder_input_tokens": encoder})["encoder_input_tokens"]
    if mode == "score":
      scores = _score_labels(predictor, encoder, label_targets)[: len(chunk)]
      predictions = [labels[i] for i in scores.argmax(axis=1)]
    else:
      tokens = predictor.generate(encoder)[: len(chunk)]
      predictions = [vocabulary.decode([int(t) for t in row if t > 0 and t != vocabulary.eos_id]) for row in tokens]
    for i, ex in enumerate(chunk):
      line = {
        "inputs": _text(ex.get("inputs_pretokenized", "")),
        "targets": _text(ex.get("targets_pretokenized", "")),
        "prediction": predictions[i],
      }
      if mode == "score":
        line["scores"] = {label: float(s) for label, s in zip(labels, scores[i])}
      lines.append(line)
  if jax.process_index() == 0:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(path)
  return path


if __name__ == "__main__":  # python -m prompt_tuning.infer --gin_file=... (same as `prompt-tuning infer`)
  import sys

  from prompt_tuning import cli

  raise SystemExit(cli.main(["infer", *sys.argv[1:]]))
