"""The seqio task that pretrains the demo model: span corruption over the demo corpus (`corpus.py`).

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

from prompt_tuning.data import span_corruption
from prompt_tuning.data.errors import DataConfigError

TASK_NAME = "demo_span_corruption"
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
  corpus_dir: str = gin.REQUIRED, vocabulary_path: str = gin.REQUIRED, name: str = TASK_NAME
) -> str:
  """Registers (once per configuration) the span-corruption task over `corpus_dir`; returns its name.

  Raises:
    DataConfigError: a missing corpus file or vocabulary, with the command that builds them.
  """
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
      span_corruption.concatenate_and_split,
      span_corruption.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
    ],
    metric_fns=[],
  )
  return name
