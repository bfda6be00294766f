"""The demo's own data and model: a small T5 pretrained here, and a labeled task derived from WordNet.

Everything ships in `prompt_tuning/assets/` and is rebuilt from Debian packages (WordNet, the King James Bible) by
`make demo-model` (`python -m prompt_tuning.demo_data.build`):

- `corpus.py`      the pretraining text (WordNet glosses and examples + the KJV);
- `vocabulary.py`  the SentencePiece vocabulary trained on it (T5's special ids, 100 sentinels);
- `pretraining.py` the span-corruption seqio task over the corpus (`configs/pretrain_demo.gin`);
- `wordnet_task.py` the "Is a poodle a kind of canine?" task, its files and its seqio registration;
- `wordnet_categories.py` the demo's "Is a cachalot an animal or a plant?" task, likewise;
  `wordnet_task.py` also derives two generation tasks from the two (word to category, gloss to word);
- `build.py`       the steps in order, and the export of the shipped checkpoint.

Importing this package reads nothing; `register_wordnet_task()` registers the task (once).
"""

from pathlib import Path

import gin

from prompt_tuning.demo_data.locations import (
  ASSETS,
  WORDNET_CATEGORY_TASK_DIR,
  WORDNET_CATEGORY_TASK_NAME,
  WORDNET_GLOSS_TO_WORD_DIR,
  WORDNET_GLOSS_TO_WORD_NAME,
  WORDNET_TASK_DIR,
  WORDNET_TASK_NAME,
  WORDNET_WORD_TO_CATEGORY_DIR,
  WORDNET_WORD_TO_CATEGORY_NAME,
)

DEMO_MODEL_DIR = ASSETS / "demo_t5"
DEMO_VOCABULARY = DEMO_MODEL_DIR / "sentencepiece.model"
DEMO_MODEL_SIZE = "t5_1_1_demo"
# The demo family (#17): each SIZE (gin/models/sizes/demo*.gin, `t5_1_1_<SIZE>` in models/configs.py) and the folder
# its span-corruption model ships in; the LM-adapted one (Lester et al. 2021, section 3.2) is that folder + "_lm".
# All share demo_t5's vocabulary (DEMO_VOCABULARY), so only demo_t5 carries a copy.
DEMO_FAMILY = {"demo_1m": "demo_t5_1m", "demo_3m": "demo_t5_3m", "demo": "demo_t5"}
# The recorded demo run's trained prompt and folded prefix, a library `prompt-tuning serve --prompts_dir` serves.
DEMO_LIBRARY_DIR = ASSETS / "demo_library"


def demo_model_dir(size: str = "demo", lm_adapted: bool = False) -> Path:
  """The folder of one shipped model of the demo family: `size` names it as models/sizes/ does (DEMO_FAMILY)."""
  if size not in DEMO_FAMILY:
    raise ValueError(f"no demo model of size {size!r}; the demo family is {', '.join(map(repr, DEMO_FAMILY))}")
  return ASSETS / (DEMO_FAMILY[size] + ("_lm" if lm_adapted else ""))


@gin.configurable(module="prompt_tuning.demo_data")
def demo_model_path(size: str = "demo", lm_adapted: bool = False) -> str:
  """The shipped demo model's folder (a gin hook for INITIAL_CHECKPOINT_PATH); `size` and `lm_adapted` pick another
  member of the demo family, e.g. `prompt_tuning.demo_data.demo_model_path.size = 'demo_1m'` with
  models/sizes/demo_1m.gin."""
  return str(demo_model_dir(size, lm_adapted))


@gin.configurable(module="prompt_tuning.demo_data")
def demo_vocabulary_path() -> str:
  """The shipped demo model's SentencePiece model (a gin hook for VOCABULARY_PATH)."""
  return str(DEMO_VOCABULARY)


def register_wordnet_task(*args, **kwargs) -> str:
  """Registers the WordNet hypernymy task (see `wordnet_task.register_wordnet_task`); returns its name."""
  from prompt_tuning.demo_data import wordnet_task

  return wordnet_task.register_wordnet_task(*args, **kwargs)


def register_wordnet_category_task(*args, **kwargs) -> str:
  """Registers the WordNet animal-or-plant task (see `wordnet_categories.register_wordnet_category_task`); returns
  its name."""
  from prompt_tuning.demo_data import wordnet_categories

  return wordnet_categories.register_wordnet_category_task(*args, **kwargs)


def register_demo_tasks() -> list[str]:
  """Registers the demo family of tasks, for transfer between them (`prompt_tuning.transfer`): animal or plant,
  hypernymy, word to category and gloss to word (`wordnet_task`'s docstring); returns their names."""
  from prompt_tuning.demo_data import wordnet_task

  return [
    register_wordnet_category_task(),
    register_wordnet_task(),
    wordnet_task.register_word_to_category_task(),
    wordnet_task.register_gloss_to_word_task(),
  ]


__all__ = [
  "ASSETS",
  "DEMO_FAMILY",
  "DEMO_LIBRARY_DIR",
  "DEMO_MODEL_DIR",
  "DEMO_MODEL_SIZE",
  "DEMO_VOCABULARY",
  "WORDNET_CATEGORY_TASK_DIR",
  "WORDNET_CATEGORY_TASK_NAME",
  "WORDNET_GLOSS_TO_WORD_DIR",
  "WORDNET_GLOSS_TO_WORD_NAME",
  "WORDNET_TASK_DIR",
  "WORDNET_TASK_NAME",
  "WORDNET_WORD_TO_CATEGORY_DIR",
  "WORDNET_WORD_TO_CATEGORY_NAME",
  "demo_model_dir",
  "demo_model_path",
  "demo_vocabulary_path",
  "register_demo_tasks",
  "register_wordnet_category_task",
  "register_wordnet_task",
]
