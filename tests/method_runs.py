"""Runs of every tuning method without ../shared: a tiny random T5 written by our own Hugging Face writer, and a
tiny in-memory seqio task on the shipped demo model's SentencePiece vocabulary.

Shared by tests/test_method_invariants.py, tests/test_method_resume.py, tests/test_length_buckets.py and their
subprocess helper tests/scripts/method_train.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import simulated_devices

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import prompt_tuning as pt  # noqa: E402
from prompt_tuning import optim, train  # noqa: E402
from prompt_tuning.methods import IA3, LoRA, PerLayerPrompt, PrefixSettings, Prompt  # noqa: E402
from prompt_tuning.prompts import random_uniform  # noqa: E402

DEMO_VOCAB = Path(pt.__file__).resolve().parent / "assets" / "demo_t5" / "sentencepiece.model"
TASK = "method_runs_odd_even"
VARIED_TASK = "method_runs_odd_even_varied_lengths"
VOCAB_SIZE = 8192  # the demo vocabulary's 8,092 pieces, rounded up
METHODS = ("prompt", "prefix", "per_layer_prompt", "ia3", "model")
# The subprocess that trains the methods (kill -9, 8 simulated devices), and its environment.
TRAIN_SCRIPT = Path(__file__).resolve().parent / "scripts" / "method_train.py"


def subprocess_env(devices: int = 1) -> dict:
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=simulated_devices.xla_flags(devices))


WORDS = ["apple", "house", "river", "green", "music", "stone", "cloud", "light", "table", "night"]


uniform_init = random_uniform(0.5)  # Lester et al.'s uniform in [-0.5, 0.5], the project's own initializer


def write_backbone(folder: Path) -> Path:
  """A random t5_1_1_tiny (vocabulary 8,192) saved as a Hugging Face checkpoint in `folder` (once)."""
  if not (folder / "config.json").is_file():
    config = pt.get_config("t5_1_1_tiny", vocab_size=VOCAB_SIZE)
    pt.save_hf_pretrained(folder, config, jax.device_get(pt.init_params(config, jax.random.key(0))))
  return folder


def register_task(varied_lengths: bool = False) -> str:
  """Registers TASK once: "is <word> number <i> odd?" -> yes / no; or with `varied_lengths`, VARIED_TASK, whose
  inputs repeat the word 1 to 12 times (about 7 to 20 tokens: several length buckets of 16 inputs)."""
  import seqio
  import tensorflow as tf

  name = VARIED_TASK if varied_lengths else TASK
  if name in seqio.TaskRegistry.names():
    return name

  def examples(split, shuffle_files, seed=None):
    del shuffle_files, seed
    count, offset = {"train": 96, "validation": 16}[split], {"train": 0, "validation": 1000}[split]
    numbers = range(offset, offset + count)
    words = [" ".join([WORDS[i % 10]] * (1 + (i * 7 % 12 if varied_lengths else 0))) for i in numbers]
    inputs = [f"is {word} number {i} odd?" for word, i in zip(words, numbers)]
    return tf.data.Dataset.from_tensor_slices(
      {"inputs": inputs, "targets": ["yes" if i % 2 else "no" for i in numbers]}
    )

  vocab = seqio.SentencePieceVocabulary(str(DEMO_VOCAB), extra_ids=0)
  seqio.TaskRegistry.add(
    name,
    seqio.FunctionDataSource(examples, splits=["train", "validation"]),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
    metric_fns=[],
  )
  return name


def method_settings(method: str) -> dict:
  """The RunConfig settings that select one tuning method."""
  settings = {
    "prompt": {"prompt": Prompt(3, uniform_init)},
    "prefix": {"prompt": None, "prefix": PrefixSettings(2, mlp_width=8)},
    "per_layer_prompt": {"prompt": None, "methods": (PerLayerPrompt(3, uniform_init),)},
    "ia3": {"prompt": None, "methods": (IA3(),)},
    # Not in METHODS (tests/test_lora.py trains it); tests/scripts/method_train.py takes it.
    "lora": {"prompt": None, "methods": (LoRA(rank=4),), "optimizer": optim.adafactor(learning_rate=1e-2)},
    "model": {"prompt": None, "trainable_pattern": ".*", "optimizer": optim.adafactor(learning_rate=1e-2)},
  }
  return settings[method]


def trainable_roots(method: str) -> set[str]:
  """The top-level keys of the trainable tree a method's run must have."""
  return {"t5"} if method == "model" else {method}


def run_config(model_dir: Path, backbone: Path, method: str, **overrides) -> train.RunConfig:
  settings = dict(
    model_dir=str(model_dir),
    initial_checkpoint_path=str(backbone),
    mixture_or_task_name=register_task(),
    task_feature_lengths={"inputs": 16, "targets": 4},
    batch_size=8,
    dropout_rate=0.0,
    **method_settings(method),
  )
  settings.update(overrides)
  return train.RunConfig(**settings)


def final_trainable(cfg: train.RunConfig) -> dict[str, np.ndarray]:
  """The trainable tree of the latest checkpoint, flattened by '/' paths (host arrays)."""
  run = train.build(cfg)
  run.checkpoints.close()
  flat = optim._flat(run.state.trainable)
  return {k: np.asarray(jax.device_get(v)) for k, v in flat.items()} | {"step": np.asarray(int(run.state.step))}


def train_methods(
  root: Path,
  backbone: Path,
  methods: tuple[str, ...],
  steps: int,
  checkpoint_every: int = 100,
  bucket: bool = False,
  **overrides,
) -> dict[str, np.ndarray]:
  """Trains each method `steps` steps in ROOT/<method> (a checkpoint and its exports at the end), in this process;
  returns every method's final trainable leaves ("<method>:<path>") and per-step losses ("<method>:loss").
  `bucket`: BUCKET_BY_LENGTH on the varied-length task. Both sides of the 1-vs-8-device comparisons train through
  here: the one-device side in the test's process, the 8-device side in tests/scripts/method_train.py."""
  import json

  results = {}
  for method in methods:
    if bucket:
      overrides = {**overrides, "bucket_by_length": True, "mixture_or_task_name": register_task(True)}
    cfg = run_config(Path(root) / method, backbone, method, **overrides)
    train.train(cfg, num_train_steps=steps, checkpoint_every=checkpoint_every, log_every=1)
    results |= {f"{method}:{path}": value for path, value in final_trainable(cfg).items()}
    lines = [json.loads(x) for x in (Path(root) / method / "metrics.jsonl").read_text().splitlines()]
    results[f"{method}:loss"] = np.array([x["train/loss"] for x in lines if "train/loss" in x])
  return results


def synthetic_batch(seed: int = 0, batch: int = 8) -> dict[str, np.ndarray]:
  """A seqio-converted encoder-decoder batch of random tokens (no task needed)."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, VOCAB_SIZE, (batch, 4)).astype(np.int32)
  return {
    "encoder_input_tokens": rng.integers(2, VOCAB_SIZE, (batch, 16)).astype(np.int32),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones_like(targets, np.float32),
  }
