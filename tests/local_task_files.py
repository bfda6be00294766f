"""A yes/no task in local JSONL files, and the command-line flags that train on it with the reference tiny T5X."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["apple", "house", "river", "green", "music", "stone", "cloud", "light"]


def write_task(folder: Path, train: int = 48, validation: int = 8) -> tuple[Path, Path]:
  """Train and validation JSONL files ("is apple 3 odd?" -> yes/no)."""
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for split, count in (("train", train), ("validation", validation)):
    path = folder / f"{split}.jsonl"
    with open(path, "w") as f:
      for i in range(count):
        f.write(json.dumps({"question": f"is {WORDS[i % 8]} {i} odd?", "answer": "yes" if i % 2 else "no"}) + "\n")
    paths.append(path)
  return paths[0], paths[1]


def cli_flags(reference_dir: Path, folder: Path, task_name: str, validation: int = 8) -> list[str]:
  """test/prompt_tiny.gin on the reference tiny T5X checkpoint and a local task written into `folder`."""
  train_file, validation_file = write_task(folder, validation=validation)
  return [
    "--gin_file=test/prompt_tiny.gin",
    "--gin_file=tasks/local_files.gin",
    f"--gin.INITIAL_CHECKPOINT_PATH='{reference_dir / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
    f"--gin.VOCABULARY_PATH='{reference_dir / 't5_spm_32000.model'}'",
    f"--gin.LOCAL_TASK_NAME='{task_name}'",
    f"--gin.TRAIN_FILE='{train_file}'",
    f"--gin.VALIDATION_FILE='{validation_file}'",
    "--gin.INPUT_TEMPLATE='question: {question}'",
    "--gin.TARGET_COLUMN='answer'",
    "--gin.CLASS_LABELS=['no', 'yes']",
  ]
