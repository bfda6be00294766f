"""Inference: predictions (JSONL, with their inputs) or class-label ranking by log-likelihood.

    prompt-tuning infer --gin_file=configs/prompt_base.gin --gin.MODEL_DIR="'/tmp/run'" \
      --gin.infer.output_file="'/tmp/run/predictions.jsonl'"

`mode="predict"` decodes each input; `mode="score"` scores every class label
of the task (`prompt_tuning.data.get_class_labels`) and predicts the most
likely one, which never produces an invalid label.

Several prompts through the one frozen backbone (`infer.prompt_files`, read and
checked by the prompt method, `Prompt.read_file` and `Prompt.check`, as the
server reads a library file: .npy, .safetensors, a reference run's extensionless
`encoder.prompt.prompt.prompt`, a MODEL_DIR, a numpy_checkpoints step folder):

- a list plus `infer.ensemble`: prompt ensembling (Lester et al. 2021, section
  7): each input under each of the K prompts in one batch (row b * K + k),
  combined by majority vote over the K outputs (`'vote'`, either mode; ties go
  to the lowest-numbered prompt) or, in score mode, by the mean over prompts of
  each class label's log-probability (`'mean'`). Each line also carries every
  prompt's own prediction.
- a dict {name: file} plus `infer.input_file`: mixed-task inference, a JSONL
  file whose lines name their prompt (`{"inputs": "...", "prompt": "name"}`,
  optional "targets"); every row decodes with its own prompt, rows of different
  prompts in one batch, each as it would alone.

The prompts take the place of the run's own trained vectors, so the config's
other methods (prefix, IA3, per-layer prompts) are refused with them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import gin
import jax
import numpy as np

from prompt_tuning import decoding, inputs, storage

log = logging.getLogger(__name__)

MODES = ("predict", "score")
ENSEMBLES = ("vote", "mean")


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
  prompt_files: Sequence[str] | Mapping[str, str] | None = None,
  ensemble: str | None = None,
  input_file: str | None = None,
) -> Path:
  """Writes one JSON line per example: inputs, targets, prediction (and label scores in score mode).

  Args:
    prompt_files, ensemble, input_file: several prompts at once (see the module docstring).

  Returns:
    The path written (default MODEL_DIR/inference/<task>_<split>.jsonl).
  """
  from prompt_tuning import eval as evaluation
  from prompt_tuning import validation
  from prompt_tuning.run import RunConfig, build_inference

  if mode not in MODES:
    raise ValueError(f"unknown infer mode {mode!r}; use one of {MODES}.")
  _check_prompt_settings(prompt_files, ensemble, input_file, mode)
  validation.check_num_examples(num_examples, "infer.num_examples")
  cfg = run_config if run_config is not None else RunConfig()
  if input_file is None:  # the rows come from the task's split
    validation.check_split(cfg.mixture_or_task_name, split, "infer.split")
  if prompt_files is not None:
    cfg = _backbone_only(cfg)
  run = build_inference(cfg)
  task = inputs.get_task(cfg.mixture_or_task_name)
  vocabulary = task.output_features["targets"].vocabulary
  labels = label_targets = None
  if mode == "score":
    from prompt_tuning.data import get_class_labels

    labels = get_class_labels(cfg.mixture_or_task_name)
    if not labels:
      raise ValueError(f"task {cfg.mixture_or_task_name!r} declares no class labels; use mode='predict'.")
    label_targets = _label_targets(labels, vocabulary, cfg.task_feature_lengths["targets"])
  name = task.name if input_file is None else Path(input_file).stem
  default = storage.path(cfg.model_dir) / "inference" / f"{name}_{split}.jsonl"
  path = storage.path(output_file) if output_file else default
  if not storage.is_remote(path):
    path.parent.mkdir(parents=True, exist_ok=True)
  if prompt_files is None:
    predictor = evaluation.Predictor(run, decoding_settings, cfg.batch_size, vocab_size=vocabulary.vocab_size)
    examples = list(_examples(cfg.mixture_or_task_name, cfg.task_feature_lengths, split, num_examples))
    lines = _single_prompt_lines(predictor, examples, cfg, vocabulary, labels, label_targets)
  else:
    rows = RowPrompts(run, decoding_settings, _load_prompts(prompt_files, run.tuned.config))
    if input_file is None:
      examples = list(_examples(cfg.mixture_or_task_name, cfg.task_feature_lengths, split, num_examples))
      lines = _ensemble_lines(rows, examples, cfg, vocabulary, labels, label_targets, ensemble)
    else:
      examples = _file_examples(input_file, vocabulary, cfg.task_feature_lengths, list(rows.names), num_examples)
      lines = _mixed_lines(rows, examples, cfg, vocabulary, labels, label_targets)
  if jax.process_index() == 0:
    storage.write_bytes(path, "".join(json.dumps(line) + "\n" for line in lines).encode())
  return path


def _decode_text(vocabulary, tokens) -> str:
  return vocabulary.decode([int(t) for t in tokens if t > 0 and t != vocabulary.eos_id])


def _encoder_batch(chunk: list[dict], cfg) -> np.ndarray:
  """The chunk's input tokens, padded to the feature length and to a full batch [batch_size, T]."""
  rows = _pad([ex["inputs"] for ex in chunk], cfg.task_feature_lengths["inputs"])
  return inputs.pad_rows({"x": rows}, cfg.batch_size)["x"]


def _line(ex: dict, prediction: str) -> dict:
  return {
    "inputs": _text(ex.get("inputs_pretokenized", "")),
    "targets": _text(ex.get("targets_pretokenized", "")),
    "prediction": prediction,
  }


def _single_prompt_lines(predictor, examples, cfg, vocabulary, labels, label_targets) -> list[dict]:
  lines = []
  for chunk in _chunks(examples, cfg.batch_size):
    encoder = _encoder_batch(chunk, cfg)
    if predictor.bucket_lengths:  # A bounded set of compiled shapes, the same results (Predictor's docstring).
      encoder = inputs.trim_to_buckets({"encoder_input_tokens": encoder})["encoder_input_tokens"]
    if labels is not None:
      scores = _score_labels(predictor, encoder, label_targets)[: len(chunk)]
      predictions = [labels[i] for i in scores.argmax(axis=1)]
    else:
      tokens = predictor.generate(encoder)[: len(chunk)]
      predictions = [_decode_text(vocabulary, row) for row in tokens]
    for i, ex in enumerate(chunk):
      line = _line(ex, predictions[i])
      if labels is not None:
        line["scores"] = {label: float(s) for label, s in zip(labels, scores[i])}
      lines.append(line)
  return lines


# ---------------------------------------------------------------------------
# Several prompts: ensembles and mixed rows.


def _check_prompt_settings(prompt_files, ensemble, input_file, mode: str) -> None:
  """One clear error for each combination of infer.prompt_files / ensemble / input_file that means nothing."""
  if prompt_files is None:
    for name, value in (("ensemble", ensemble), ("input_file", input_file)):
      if value is not None:
        raise ValueError(f"infer.{name} is set but infer.prompt_files is not: give the prompts it applies to.")
    return
  if isinstance(prompt_files, str) or not prompt_files:
    raise ValueError(
      f"infer.prompt_files = {prompt_files!r}: give a list of prompt files (an ensemble) or a dict {{name: file}} "
      "(rows of infer.input_file choose their prompt by name)."
    )
  if isinstance(prompt_files, Mapping):
    if input_file is None:
      raise ValueError(
        "infer.prompt_files is a dict {name: file}: set infer.input_file, a JSONL file whose lines "
        'name their prompt ({"inputs": ..., "prompt": NAME}); for an ensemble give a list instead.'
      )
    if ensemble is not None:
      raise ValueError(
        "infer.ensemble combines a list of prompts over the same inputs; with a dict and "
        "infer.input_file every row has one prompt: unset infer.ensemble."
      )
    return
  if input_file is not None:
    raise ValueError(
      "infer.input_file needs infer.prompt_files as a dict {name: file} (rows choose a prompt by "
      "name); with a list of prompts, inputs come from the task."
    )
  if ensemble not in ENSEMBLES:
    raise ValueError(f"infer.prompt_files is a list: set infer.ensemble to one of {ENSEMBLES} (got {ensemble!r}).")
  if ensemble == "mean" and mode != "score":
    raise ValueError(
      "infer.ensemble = 'mean' averages class-label log-probabilities: use infer.mode = 'score', or "
      "infer.ensemble = 'vote' to vote over decoded outputs."
    )


def _backbone_only(cfg):
  """The run config without its own tuned vectors: the prompt files take their place (a multi-task method's
  per-task prompts, `<method>_tasks/task_K.npy` of its export, are such files).

  Raises:
    ValueError: the config tunes more than a prompt (prefix, IA3, per-layer prompts).
  """
  import dataclasses

  others = [type(m).__name__ for m in cfg.methods if not m.task_count]
  others += ["prefix"] if cfg.prefix is not None else []
  if others or cfg.trainable_pattern == ".*":
    what = ", ".join(others) if others else "model tuning (TRAINABLE_PATTERN = '.*')"
    raise ValueError(
      f"infer.prompt_files replaces the run's soft prompt, but this config also uses {what}: infer with a prompt "
      "config (e.g. runs/prompt_infer.gin with a prompt_*.gin), or serve mixed methods with `prompt-tuning serve`."
    )
  if cfg.prompt is not None:
    log.info("infer.prompt_files replace the run's own prompt (PROMPT_LENGTH=%d)", cfg.prompt.length)
  return dataclasses.replace(cfg, prompt=None, methods=())


def _load_prompts(prompt_files, config) -> dict[str, np.ndarray]:
  """{name: prompt [P, D]} in the given order (a list: names '0', '1', ...), each read and checked against the
  backbone `config` by the prompt method, as the server reads and checks a library file (`Prompt.read_file`,
  `Prompt.check`).

  Raises:
    OSError, ValueError (PromptError, CheckpointError): naming infer.prompt_files[name] and what is wrong.
  """
  from prompt_tuning.methods import Limits
  from prompt_tuning.methods.prompt import Prompt

  # Any prompt length: a batch takes its prompts' longest (`ensembles.stack_prompts`).
  limits = Limits(config, {"prompt": np.iinfo(np.int32).max}, (Prompt.name,))
  named = dict(prompt_files) if isinstance(prompt_files, Mapping) else {str(i): f for i, f in enumerate(prompt_files)}
  prompts = {}
  for name, file in named.items():
    try:
      arrays = Prompt.read_file(Path(file))
      Prompt.check(arrays, limits)
    except (OSError, ValueError) as e:
      raise type(e)(f"infer.prompt_files[{name!r}]: {e}") from e
    prompts[str(name)] = arrays["prompt"]
  return prompts


class RowPrompts:
  """Decodes and scores rows that each carry their own soft prompt, through the inference build's frozen backbone.

  Prompts of different lengths share a batch: each row attends to its own prompt's length only
  (`ensembles.stack_prompts`), so every row computes what it computes alone.
  """

  def __init__(self, run, settings: decoding.DecodingSettings, prompts: dict[str, np.ndarray]):
    from prompt_tuning import optim

    self.run, self.settings, self.names = run, settings, tuple(prompts)
    self._prompts = [prompts[n] for n in self.names]
    self._backbone = optim.merge(run.trainable, run.frozen)["t5"]

  def _adapters(self, which: Sequence[int]) -> dict:
    from prompt_tuning import ensembles

    stacked, lengths = ensembles.stack_prompts([self._prompts[i] for i in which])  # [n, P_max, D], [n]
    return {"input": {"prompt": stacked, "prompt_lengths": lengths}}

  def generate(self, tokens: np.ndarray, which: Sequence[int]) -> np.ndarray:
    """Decoded tokens [n, L] of tokens [n, T], row i under prompt `which[i]`."""
    tuned = self.run.tuned
    out = decoding.generate(
      tuned.config,
      self._backbone,
      tokens,
      adapters=self._adapters(which),
      prompt_combination=tuned.prompt_combination,
      settings=self.settings,
    )
    return np.asarray(jax.device_get(out.tokens))

  def score(self, tokens: np.ndarray, label_targets: np.ndarray, which: Sequence[int]) -> np.ndarray:
    """log p(label | input, prompt) [n, num_labels] (the run's class_label_softmax applies, as in single-prompt
    scoring)."""
    n, num_labels = tokens.shape[0], label_targets.shape[0]
    logp = decoding.sequence_log_probs(
      self.run.tuned.config,
      self._backbone,
      np.repeat(tokens, num_labels, axis=0),
      np.tile(label_targets, (n, 1)),
      adapters=self._adapters(np.repeat(np.asarray(which), num_labels)),
      prompt_combination=self.run.tuned.prompt_combination,
      output_ids=self.run.output_ids,
    )
    return np.asarray(jax.device_get(logp)).reshape(n, num_labels)


def _ensemble_lines(rows: RowPrompts, examples, cfg, vocabulary, labels, label_targets, ensemble) -> list[dict]:
  """Every example under each of the K prompts (rows b * K + k of one batch), combined by `ensemble`."""
  from prompt_tuning import ensembles

  k = len(rows.names)
  lines = []
  for chunk in _chunks(examples, cfg.batch_size):
    encoder = np.repeat(_encoder_batch(chunk, cfg), k, axis=0)  # [batch * K, T]
    which = np.tile(np.arange(k), cfg.batch_size)
    if labels is not None:
      logp = rows.score(encoder, label_targets, which).reshape(cfg.batch_size, k, -1)[: len(chunk)]  # [b, K, C]
      each = logp.argmax(axis=-1)  # [b, K]
      if ensemble == "mean":
        choice, mean = (np.asarray(x) for x in ensembles.mean_log_prob_choice(logp))
      else:
        winner, _ = ensembles.majority_vote(each[..., None])
        choice = np.asarray(winner)[:, 0]
      for i, ex in enumerate(chunk):
        line = _line(ex, labels[int(choice[i])])
        line["prompt_predictions"] = {name: labels[int(c)] for name, c in zip(rows.names, each[i])}
        if ensemble == "mean":
          line["scores"] = {label: float(s) for label, s in zip(labels, mean[i])}
        lines.append(line)
    else:
      tokens = rows.generate(encoder, which).reshape(cfg.batch_size, k, -1)[: len(chunk)]  # [b, K, L]
      tokens = np.where(np.cumsum(tokens == vocabulary.eos_id, axis=-1) > 0, 0, tokens)  # what follows EOS is noise
      winner, votes = (np.asarray(x) for x in ensembles.majority_vote(tokens))
      for i, ex in enumerate(chunk):
        line = _line(ex, _decode_text(vocabulary, winner[i]))
        line["votes"] = int(votes[i])
        line["prompt_predictions"] = {name: _decode_text(vocabulary, t) for name, t in zip(rows.names, tokens[i])}
        lines.append(line)
  return lines


def _file_examples(input_file: str, vocabulary, lengths, names: list[str], num_examples: int | None) -> list[dict]:
  """The JSONL input file's rows, tokenized as the task's inputs are (with EOS), each with its prompt's index.

  Raises:
    FileNotFoundError / ValueError: a missing file, a line without "inputs", or a prompt name not in prompt_files.
  """
  path = Path(input_file)
  if not path.is_file():
    raise FileNotFoundError(f"infer.input_file {path} does not exist.")
  examples = []
  for number, raw in enumerate(path.read_bytes().splitlines(), 1):
    try:
      text = raw.decode("utf-8")
      row = json.loads(text) if text.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(
        f"{path}:{number}: not a JSON line in UTF-8 ({type(e).__name__}: {e}); infer.input_file is JSONL, one "
        '{"inputs": ..., "prompt": NAME} a line: save it as UTF-8 text.'
      ) from None
    if row is None:
      continue
    if not isinstance(row, dict) or "inputs" not in row or "prompt" not in row:
      raise ValueError(f'{path}:{number}: each line needs "inputs" and "prompt" ({{"inputs": ..., "prompt": NAME}}).')
    if str(row["prompt"]) not in names:
      raise ValueError(f"{path}:{number}: prompt {row['prompt']!r} is not in infer.prompt_files ({names}).")
    tokens = vocabulary.encode(str(row["inputs"])) + [vocabulary.eos_id]
    if len(tokens) > lengths["inputs"]:
      raise ValueError(
        f"{path}:{number}: {len(tokens)} input tokens exceed TASK_FEATURE_LENGTHS['inputs'] = {lengths['inputs']}."
      )
    examples.append(
      {
        "inputs": np.asarray(tokens, np.int32),
        "inputs_pretokenized": str(row["inputs"]),
        "targets_pretokenized": str(row.get("targets", "")),
        "prompt_index": names.index(str(row["prompt"])),
      }
    )
    if num_examples is not None and len(examples) == num_examples:
      break
  return examples


def _mixed_lines(rows: RowPrompts, examples, cfg, vocabulary, labels, label_targets) -> list[dict]:
  """Each row with its own prompt, rows of different prompts in one batch."""
  lines = []
  for chunk in _chunks(examples, cfg.batch_size):
    encoder = _encoder_batch(chunk, cfg)
    which = [ex["prompt_index"] for ex in chunk] + [0] * (cfg.batch_size - len(chunk))
    if labels is not None:
      scores = rows.score(encoder, label_targets, which)[: len(chunk)]
      predictions = [labels[i] for i in scores.argmax(axis=1)]
    else:
      predictions = [_decode_text(vocabulary, t) for t in rows.generate(encoder, which)[: len(chunk)]]
    for i, ex in enumerate(chunk):
      line = _line(ex, predictions[i]) | {"prompt": rows.names[ex["prompt_index"]]}
      if labels is not None:
        line["scores"] = {label: float(s) for label, s in zip(labels, scores[i])}
      lines.append(line)
  return lines
