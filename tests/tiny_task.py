"""A tiny in-memory seqio task on the real T5 SentencePiece model, and the tiny prompt-tuning run on it (the settings
of configs/test/prompt_tiny.gin), for trainer tests."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from prompt_tuning.methods import Prompt  # noqa: E402
from prompt_tuning.prompts import random_uniform  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
VOCAB_PATH = REFERENCE / "t5_spm_32000.model"
T5X_TINY = REFERENCE / "t5x_t5_1_1_tiny" / "checkpoint_3"
TASK = "tiny_yes_no"
LABELLED_TASK = "tiny_yes_no_labelled"
WORDS = ["apple", "house", "river", "green", "music", "stone", "cloud", "light", "table", "night"]


def _examples(split: str, shuffle_files: bool, seed=None):
  del shuffle_files, seed
  count = {"train": 96, "validation": 16}[split]
  offset = 0 if split == "train" else 1000
  inputs = [f"is {WORDS[(i + offset) % 10]} number {i + offset} odd?" for i in range(count)]
  targets = ["yes" if (i + offset) % 2 else "no" for i in range(count)]
  return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})


def register(class_labels: bool = False) -> str:
  """Registers TASK once (idempotent) and returns its name; `class_labels`: the same task as LABELLED_TASK, with
  its class labels ("no", "yes") declared."""
  name = LABELLED_TASK if class_labels else TASK
  if name in seqio.TaskRegistry.names():
    return name
  vocab = seqio.SentencePieceVocabulary(str(VOCAB_PATH), extra_ids=100)
  if class_labels:
    from prompt_tuning.data import class_labels as class_labels_lib

    class_labels_lib.register_class_labels(name, ["no", "yes"])
  seqio.TaskRegistry.add(
    name,
    seqio.FunctionDataSource(_examples, splits=["train", "validation"]),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
    metric_fns=[],
  )
  return name


# The tests' prompt initializer: Lester et al.'s uniform in [-0.5, 0.5] (prompts/random.gin's, the project's own).
uniform_init = random_uniform(0.5)


def run_config(model_dir, **overrides):
  """The `RunConfig` of configs/test/prompt_tiny.gin on TASK and the reference tiny T5X checkpoint (a 3-token
  uniform prompt, batch 8, no dropout), for `model_dir`; `overrides`: other RunConfig fields."""
  from prompt_tuning import train

  settings = dict(
    model_dir=str(model_dir),
    initial_checkpoint_path=str(T5X_TINY),
    model_size="t5_1_1_tiny",
    mixture_or_task_name=register(),
    task_feature_lengths={"inputs": 16, "targets": 4},
    prompt=Prompt(3, uniform_init),
    batch_size=8,
    dropout_rate=0.0,
  )
  settings.update(overrides)
  return train.RunConfig(**settings)
