"""The seqio tasks that pretrain the demo model over the demo corpus (`corpus.py`): span corruption, and the
prefix-LM objective of LM adaptation (Lester et al. 2021, section 3.2; `prompt_tuning.data.prefix_lm`).

    import prompt_tuning.demo_data.pretraining
    MIXTURE_OR_TASK_NAME = @prompt_tuning.demo_data.register_pretraining_task()
    prompt_tuning.demo_data.register_pretraining_task.corpus_dir = '.cache/demo_build/corpus'
    prompt_tuning.demo_data.register_pretraining_task.vocabulary_path = '.cache/demo_build/vocab/demo_spm.model'

The corpus folder holds `train.txt` and `validation.txt`, one passage a line. The task's features carry the given
vocabulary explicitly (not the globally configured one), since the sentinels are taken from its end.
"""

from __future__ import annotations

import os

import gin
import seqio

from prompt_tuning.data import prefix_lm, span_corruption
from prompt_tuning.data.errors import DataConfigError

TASK_NAME = "demo_span_corruption"
PREFIX_LM_TASK_NAME = "demo_prefix_lm"
OBJECTIVES = {
  "span_corruption": (TASK_NAME, [span_corruption.concatenate_and_split, span_corruption.span_corruption]),
  "prefix_lm": (PREFIX_LM_TASK_NAME, [prefix_lm.concatenate_and_split, prefix_lm.split_inputs_and_targets]),
}
SPLITS = ("train", "validation")


@seqio.map_over_dataset
def _lines_as_targets(line):
  return {"targets": line}


def _output_features(vocabulary_path: str) -> dict[str, seqio.Feature]:
  vocabulary = seqio.SentencePieceVocabulary(vocabulary_path, extra_ids=100)
  return {
    "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


@gin.configurable(module="prompt_tuning.demo_data")
def register_pretraining_task(
  corpus_dir: str = gin.REQUIRED,
  vocabulary_path: str = gin.REQUIRED,
  name: str | None = None,
  objective: str = "span_corruption",
) -> str:
  """Registers the pretraining task over `corpus_dir`; returns its name.

  Args:
    corpus_dir: the folder of train.txt and validation.txt.
    vocabulary_path: the SentencePiece model (100 sentinels are added at its end).
    name: the task name (default: `TASK_NAME` or `PREFIX_LM_TASK_NAME`, by objective).
    objective: "span_corruption" (pretraining) or "prefix_lm" (LM adaptation).

  Raises:
    DataConfigError: a missing corpus file or vocabulary, with the command that builds them.
    ValueError: an unknown objective.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown pretraining objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
  default_name, objective_preprocessors = OBJECTIVES[objective]
  name = name or default_name
  files = {split: os.path.join(os.fspath(corpus_dir), f"{split}.txt") for split in SPLITS}
  for path in [*files.values(), os.fspath(vocabulary_path)]:
    if not os.path.exists(path):
      raise DataConfigError(f"{path} does not exist: build the demo corpus and vocabulary with `make demo-model`")
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
    name,
    source=seqio.TextLineDataSource(files),
    output_features=_output_features(os.fspath(vocabulary_path)),
    preprocessors=[
      _lines_as_targets,
      seqio.preprocessors.tokenize,
      *objective_preprocessors,
      seqio.preprocessors.append_eos_after_trim,
    ],
    metric_fns=[],
  )
  return name
