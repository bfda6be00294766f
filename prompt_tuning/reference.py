"""What a user of the reference implementation (google-research/prompt-tuning on t5x) brings, and how it maps here.

- `REFERENCE_NAMES`: every macro of the reference's gin files and t5x's runs/ files that is NOT read here, with the
  setting to use instead (docs/MIGRATING.md is the full table). The unread-setting check
  (`prompt_tuning.gin_config`) quotes it when such a macro is set.
- `train_steps`: TRAIN_STEPS. Here it counts tuning steps; in t5x (and so the reference) it counts from the pretrained
  checkpoint's step (its 1,150,000 on `checkpoint_1100000` means 50,000 steps). TRAIN_STEPS_FROM_CHECKPOINT_STEP =
  True reads it t5x's way; t5x's TRAIN_STEPS_RELATIVE is our TRAIN_STEPS. A TRAIN_STEPS that can only be t5x's count
  (larger than a pretrained checkpoint's step of at least `PRETRAINED_STEP_FLOOR`) is refused unless
  TRAIN_STEPS_FROM_CHECKPOINT_STEP says how to read it.
- `check_loss_normalizing_factor`: LOSS_NORMALIZING_FACTOR. The loss here is the mean over the batch's real target
  tokens, t5x's 'NUM_REAL_TARGET_TOKENS'; other values are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import gin

# A checkpoint step this large is a pretrained model's (T5 1.1: 1,000,000; LM-adapted: 1,100,000), not a tuning run's.
PRETRAINED_STEP_FLOOR = 10_000
SUPPORTED_LOSS_NORMALIZING_FACTORS = ("NUM_REAL_TARGET_TOKENS",)

_SIZE = "MODEL_SIZE (a models/ family file and a models/sizes/ file: models/t5_1_1_lm100k.gin + models/sizes/xxl.gin)"
REFERENCE_NAMES: dict[str, str] = {
  # The reference's models/ and sizes/ files: the architecture is a named size here.
  **dict.fromkeys(
    (
      "ARCHITECTURE",
      "MODEL",
      "NUM_HEADS",
      "NUM_ENCODER_LAYERS",
      "NUM_DECODER_LAYERS",
      "HEAD_DIM",
      "EMBED_DIM",
      "MLP_DIM",
      "NUM_EMBEDDINGS",
    ),
    _SIZE,
  ),
  "VOCABULARY": "VOCABULARY_PATH (the SentencePiece model's path; $PROMPT_TUNING_VOCAB also works)",
  "PROMPT": "a prompts/ file (random, sampled_vocab, class_labels, text, from_file, prefix)",
  "PROMPT_REGEX": "TRAINABLE_PATTERN (one regex over our parameter paths, e.g. '^prompt(/|$)')",
  "TRAINABLE_REGEX": "TRAINABLE_PATTERN",
  "OPTIMIZER": "RunConfig.optimizer (default: Adafactor with the paper's settings; bind adafactor.* to change them)",
  "LABEL_SMOOTHING": "nothing: label smoothing is not implemented (the reference's default, 0.0, is what runs here)",
  "EMBEDDING_FILE": "nothing: class-label and sampled-vocabulary initialization read the backbone's own embedding",
  # t5x's runs/ files.
  "CHECKPOINT_PATH": "MODEL_DIR (eval and infer read its latest checkpoint) or, for a reference run's prompt, "
  "prompts/from_file.gin with PROMPT_FILE",
  "EVAL_OUTPUT_DIR": "MODEL_DIR (eval appends to MODEL_DIR/eval_metrics.jsonl)",
  "INFER_OUTPUT_DIR": "INFER_OUTPUT (one JSONL file; default MODEL_DIR/inference/<task>_<split>.jsonl)",
  "EVAL_STEPS": "train.eval_max_batches",
  "EVALUATOR_NUM_EXAMPLES": "evaluate.num_examples",
  "EVALUATOR_USE_MEMORY_CACHE": "nothing: evaluation data is read once per evaluation",
  "JSON_WRITE_N_RESULTS": "infer.num_examples",
  "USE_HARDWARE_RNG": "nothing: the random streams are jax.random keys from SEED",
}


def checkpoint_step(path: str | None) -> int | None:
  """The step of a `.../checkpoint_<step>` path (T5X's naming), else None."""
  if not path:
    return None
  match = re.fullmatch(r"checkpoint_(\d+)", Path(str(path).rstrip("/")).name)
  return int(match.group(1)) if match else None


@gin.configurable(module="prompt_tuning.reference")
def train_steps(
  steps: int = 30000,
  from_checkpoint_step: bool | None = None,
  initial_checkpoint_path: str | None = None,
  relative_steps: int | None = None,
) -> int:
  """The number of tuning steps `train` runs, from TRAIN_STEPS (see the module docstring).

  Args:
    steps: TRAIN_STEPS.
    from_checkpoint_step: TRAIN_STEPS_FROM_CHECKPOINT_STEP. True: `steps` counts from the step of
      INITIAL_CHECKPOINT_PATH (t5x); False: `steps` counts tuning steps; None: tuning steps, and a value that can only
      be t5x's count is refused.
    initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (its `checkpoint_<step>` name gives the step).
    relative_steps: t5x's TRAIN_STEPS_RELATIVE (tuning steps); when set it wins.

  Raises:
    ValueError: saying what to set.
  """
  if relative_steps is not None:
    return relative_steps
  start = checkpoint_step(initial_checkpoint_path)
  if from_checkpoint_step:
    if start is None:
      raise ValueError(
        f"TRAIN_STEPS_FROM_CHECKPOINT_STEP=True counts TRAIN_STEPS from the step of INITIAL_CHECKPOINT_PATH, but "
        f"{initial_checkpoint_path!r} is not named checkpoint_<step>: set TRAIN_STEPS to the number of tuning steps "
        "and TRAIN_STEPS_FROM_CHECKPOINT_STEP=False."
      )
    if steps <= start:
      raise ValueError(
        f"TRAIN_STEPS={steps} counted from the checkpoint's step {start} leaves no step to train: set it above {start}."
      )
    return int(steps) - start
  if from_checkpoint_step is None and start is not None and start >= PRETRAINED_STEP_FLOOR and steps > start:
    raise ValueError(
      f"TRAIN_STEPS={steps:,} looks like t5x's count, from the pretrained checkpoint's step {start:,} (the reference's "
      f"{steps:,} means {steps - start:,} tuning steps); here TRAIN_STEPS counts tuning steps. Set "
      f"TRAIN_STEPS={steps - start} (or TRAIN_STEPS_FROM_CHECKPOINT_STEP=True to read it t5x's way), or "
      f"TRAIN_STEPS_FROM_CHECKPOINT_STEP=False to really train {steps:,} steps."
    )
  return steps  # as given: validation.check_schedule refuses a non-integer, naming TRAIN_STEPS


def check_loss_normalizing_factor(value) -> None:
  """Accepts LOSS_NORMALIZING_FACTOR only where it means what this project computes.

  Raises:
    ValueError: any other value, saying why.
  """
  name = getattr(value, "name", value)  # t5x's SpecialLossNormalizingFactor enum, or its name.
  if name in SUPPORTED_LOSS_NORMALIZING_FACTORS:
    return
  raise ValueError(
    f"LOSS_NORMALIZING_FACTOR={value!r} is not supported: the loss here is the mean over the batch's real target "
    "tokens, t5x's 'NUM_REAL_TARGET_TOKENS' (the reference's None sums the token losses instead; with Adafactor's "
    "relative updates the two train alike). Remove the setting or set LOSS_NORMALIZING_FACTOR='NUM_REAL_TARGET_TOKENS'."
  )


_REFERENCE_GIN_FILES = (
  (
    r"(?:.*/)?prompt_tuning/configs/models/(t5_1_1|mt5)_(small|base|large|xl|xxl)_prompt\.gin",
    r"models/\1.gin (models/t5_1_1_lm100k.gin for the LM-adapted checkpoints) + models/sizes/\2.gin",
  ),
  (r"(?:.*/)?prompt_tuning/configs/models/(t5_1_1|mt5)_prompt\.gin", r"models/\1.gin"),
  (r"(?:.*/)?prompt_tuning/configs/models/sizes/(\w+)\.gin", r"models/sizes/\1.gin"),
  (r"(?:.*/)?prompt_tuning/configs/models/decoding/beam_search\.gin", "decoding/beam.gin"),
  (r"(?:.*/)?prompt_tuning/configs/models/decoding/nucleus_sampling\.gin", "decoding/sampling.gin"),
  (r"(?:.*/)?prompt_tuning/configs/prompts/from_class_labels(_numpy)?\.gin", "prompts/class_labels.gin"),
  (r"(?:.*/)?prompt_tuning/configs/prompts/from_sampled_vocab(_numpy)?\.gin", "prompts/sampled_vocab.gin"),
  (r"(?:.*/)?prompt_tuning/configs/prompts/from_file\.gin", "prompts/from_file.gin"),
  (r"(?:.*/)?prompt_tuning/configs/runs/prompt_(finetune|eval|infer)\.gin", r"runs/prompt_\1.gin"),
  (
    r"(?:.*/)?prompt_tuning/configs/extended/models/multi_task_(t5_1_1|mt5)_(small|base|large|xl|xxl)_prompt\.gin",
    r"models/\1.gin + models/sizes/\2.gin + prompts/multitask_prompt.gin (NUM_TASKS, MULTITASK_PROMPT_COMBINATION)",
  ),
  (
    r"(?:.*/)?prompt_tuning/configs/extended/models/multi_task_(t5_1_1|mt5)_prompt\.gin",
    r"models/\1.gin + prompts/multitask_prompt.gin (NUM_TASKS, MULTITASK_PROMPT_COMBINATION)",
  ),
  (r"(?:.*/)?prompt_tuning/configs/extended/runs/multitask_prompt_finetune\.gin", "runs/prompt_finetune.gin"),
  (r"(?:.*/)?t5x/configs/runs/finetune\.gin", "runs/prompt_finetune.gin"),
  (r"(?:.*/)?t5x/configs/runs/(eval|infer)\.gin", r"runs/prompt_\1.gin"),
)


def reference_gin_file(name: str) -> str | None:
  """For a gin file of the reference implementation or t5x, what to give here instead (docs/MIGRATING.md)."""
  for pattern, ours in _REFERENCE_GIN_FILES:
    match = re.fullmatch(pattern, name)
    if match:
      return match.expand(ours)
  return None
