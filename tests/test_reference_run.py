"""What a user of the reference implementation brings: its gin order, CLASS_LABELS, its own task module, and prompts
and MODEL_DIRs written by its numpy checkpointer (`numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt`,
raw .npy content without the extension)."""

import json
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning.checkpoints import prompt_files

REFERENCE_PROMPT = "encoder.prompt.prompt.prompt"


def _write_reference_prompt(model_dir: Path, step: int, prompt: np.ndarray) -> Path:
  """As the reference's checkpointer writes it: np.save to an open file (no .npy added), float64 by default."""
  path = model_dir / "numpy_checkpoints" / f"checkpoint_{step}" / REFERENCE_PROMPT
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:
    np.save(f, prompt.astype(np.float64))
  return path


def test_reference_prompt_file_and_model_dir_are_read(tmp_path, reference_dir):
  real = np.load(reference_dir / "prompt_5x256.npy")
  path = _write_reference_prompt(tmp_path / "ref_run", 1101000, real)
  later = _write_reference_prompt(tmp_path / "ref_run", 1150000, real * 2)
  np.testing.assert_array_equal(prompt_files.load_prompt_file(path), real.astype(np.float32))
  np.testing.assert_array_equal(prompt_files.load_prompt_file(path.parent), real.astype(np.float32))
  # The MODEL_DIR: its latest step.
  np.testing.assert_array_equal(prompt_files.load_prompt_file(tmp_path / "ref_run"), (real * 2).astype(np.float32))
  assert later.name == REFERENCE_PROMPT and later.suffix == ".prompt"
  not_npy = tmp_path / "notes.prompt"
  not_npy.write_text("hello")
  with pytest.raises(ValueError, match="unknown extension '.prompt'"):
    prompt_files.load_prompt_file(not_npy)


USER_TASK_MODULE = '''"""A user's own seqio task, as a reference user registers it (no class labels declared)."""
import seqio
import tensorflow as tf

VOCAB = seqio.SentencePieceVocabulary({vocab!r}, extra_ids=100)
WORDS = ["apple", "house", "river", "green", "music", "stone", "cloud", "light"]


def _examples(split, shuffle_files, seed=None):
  count = {{"train": 48, "validation": 8}}[split]
  return tf.data.Dataset.from_tensor_slices({{
    "inputs": [f"is {{WORDS[i % 8]}} {{i}} odd?" for i in range(count)],
    "targets": ["yes" if i % 2 else "no" for i in range(count)],
  }})


seqio.TaskRegistry.add(
  "my_yes_no",
  seqio.FunctionDataSource(_examples, splits=["train", "validation"]),
  preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
  output_features={{k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")}},
  metric_fns=[],
)
'''


def test_reference_style_command_trains_evaluates_and_infers(tmp_path, reference_dir, _cli):
  """models, prompts, sizes, runs order; the user's task module; CLASS_LABELS; then the trained prompt written the
  reference's way, as PROMPT_FILE (the reference's runs/prompt_eval.gin and prompt_infer.gin read prompts/from_file)."""
  modules = tmp_path / "modules"
  modules.mkdir()
  (modules / "reference_user_tasks.py").write_text(
    USER_TASK_MODULE.format(vocab=str(reference_dir / "t5_spm_32000.model"))
  )
  common = [
    f"--gin.INITIAL_CHECKPOINT_PATH='{reference_dir / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
    "--gin.MIXTURE_OR_TASK_MODULE='reference_user_tasks'",
    "--gin.MIXTURE_OR_TASK_NAME='my_yes_no'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
    f"--gin.VOCABULARY_PATH='{reference_dir / 't5_spm_32000.model'}'",
    "--gin.PROMPT_LENGTH=3",
    "--gin.BATCH_SIZE=8",
    "--gin.DROPOUT_RATE=0.0",
    "--gin.USE_CACHED_TASKS=False",
  ]
  run_dir = tmp_path / "run"
  train = _cli(
    "train",
    "--gin_file=models/t5_1_1.gin",
    "--gin_file=prompts/class_labels.gin",
    "--gin_file=models/sizes/tiny.gin",
    "--gin_file=runs/prompt_finetune.gin",
    *common,
    f"--gin.MODEL_DIR='{run_dir}'",
    "--gin.CLASS_LABELS=['no', 'yes']",
    "--gin.TRAIN_STEPS=2",
    "--gin.EVAL_PERIOD=2",
    extra_path=modules,
  )
  assert "trainable parameters: 12 of" in train.stderr
  trained = np.load(run_dir / "numpy_checkpoints" / "checkpoint_2" / "prompt.npy")
  own_eval = _cli(
    "eval",
    "--gin_file=models/t5_1_1.gin",
    "--gin_file=prompts/class_labels.gin",
    "--gin_file=models/sizes/tiny.gin",
    "--gin_file=runs/prompt_eval.gin",
    *common,
    f"--gin.MODEL_DIR='{run_dir}'",
    "--gin.CLASS_LABELS=['no', 'yes']",
    extra_path=modules,
  )

  reference_run = tmp_path / "reference_run"
  prompt_path = _write_reference_prompt(reference_run, 1100002, trained)
  for_file = [
    "--gin_file=models/t5_1_1.gin",
    "--gin_file=prompts/from_file.gin",
    "--gin_file=models/sizes/tiny.gin",
  ]
  evaluation = _cli(
    "eval",
    *for_file,
    "--gin_file=runs/prompt_eval.gin",
    *common,
    f"--gin.MODEL_DIR='{tmp_path / 'eval'}'",
    f"--gin.PROMPT_FILE='{prompt_path}'",
    extra_path=modules,
  )
  # The same prompt, read from the reference's file, scores exactly as in its own run.
  loss = [line for line in evaluation.stdout.splitlines() if line.startswith("loss: ")]
  assert loss and loss == [line for line in own_eval.stdout.splitlines() if line.startswith("loss: ")]

  out_file = tmp_path / "scores.jsonl"
  _cli(
    "infer",
    *for_file,
    "--gin_file=runs/prompt_infer.gin",
    *common,
    f"--gin.MODEL_DIR='{tmp_path / 'infer'}'",
    f"--gin.PROMPT_FILE='{reference_run}'",  # the reference's MODEL_DIR: its latest step
    f"--gin.INFER_OUTPUT='{out_file}'",
    extra_path=modules,
  )
  lines = [json.loads(x) for x in out_file.read_text().splitlines()]
  assert len(lines) == 8 and lines[0]["inputs"] == "is apple 0 odd?" and lines[0]["targets"] == "no"
