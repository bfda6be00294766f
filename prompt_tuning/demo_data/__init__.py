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

Importing this package reads nothing; `register_wordnet_task()` registers the task (once); `register_demo_tasks()`
the family of four, `register_demo_mixture()` their task-index mixture for multi-task prompts.
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
# The demo family of tasks (`register_demo_tasks`), in their task-index order, and the mixture of their task_index_
# variants (`register_demo_mixture`).
DEMO_TASK_NAMES = (
  WORDNET_CATEGORY_TASK_NAME,
  WORDNET_TASK_NAME,
  WORDNET_WORD_TO_CATEGORY_NAME,
  WORDNET_GLOSS_TO_WORD_NAME,
)
DEMO_MIXTURE_NAME = "task_index_wordnet_demo_tasks"


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


def _demo_task_registrations():
  """The demo family's register functions, in task-index order (each takes `name` and `input_prefix`)."""
  from prompt_tuning.demo_data import wordnet_task

  return [
    register_wordnet_category_task,
    register_wordnet_task,
    wordnet_task.register_word_to_category_task,
    wordnet_task.register_gloss_to_word_task,
  ]


def register_demo_tasks() -> list[str]:
  """Registers the demo family of tasks, for transfer between them (`prompt_tuning.transfer`): animal or plant,
  hypernymy, word to category and gloss to word (`wordnet_task`'s docstring); returns their names."""
  return [register() for register in _demo_task_registrations()]


def register_demo_task_index_tasks() -> list[str]:
  """Registers the demo family's `task_index_` tasks (as `prompt_tuning.data.registry` names them): each task's
  examples with the input opening with its task's sentinel, "<extra_id_K> ..." for task K in `register_demo_tasks`'
  order (0 animal or plant, 1 hypernymy, 2 word to category, 3 gloss to word), what multi-task methods read each
  row's task from (gin/prompts/mpt.gin); the targets, splits, class labels and metrics are the plain tasks'.
  Returns their names, `task_index_wordnet_animal_or_plant` ..."""
  from prompt_tuning.data import registry, vocab

  return [
    register(name=registry.variant_name(name, "task_index_"), input_prefix=vocab.sentinel(k) + " ")
    for k, (register, name) in enumerate(zip(_demo_task_registrations(), DEMO_TASK_NAMES))
  ]


@gin.configurable(module="prompt_tuning.demo_data")
def register_demo_mixture() -> str:
  """Registers `task_index_wordnet_demo_tasks`: the four `register_demo_task_index_tasks` at equal rates (each task
  a quarter of the training examples, whatever its size; configs/sweeps/demo_spot_mpt.gin trains MPT on it); returns
  its name (a gin hook for MIXTURE_OR_TASK_NAME)."""
  import seqio

  names = register_demo_task_index_tasks()
  if DEMO_MIXTURE_NAME not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(DEMO_MIXTURE_NAME, [(name, 1.0) for name in names])
  return DEMO_MIXTURE_NAME


@gin.configurable(module="prompt_tuning.demo_data")
def register_demo_task_index_task(task: str = gin.REQUIRED) -> str:
  """Registers the demo mixture and returns the name of one of its tasks: a multi-task run trained on the mixture is
  evaluated on each task alone with `MIXTURE_OR_TASK_NAME = @prompt_tuning.demo_data.register_demo_task_index_task()`
  and `prompt_tuning.demo_data.register_demo_task_index_task.task = 'wordnet_hypernymy'` (a plain task's name)."""
  if task not in DEMO_TASK_NAMES:
    raise ValueError(f"{task!r} is not a demo task; the demo tasks are {', '.join(map(repr, DEMO_TASK_NAMES))}")
  register_demo_mixture()
  return register_demo_task_index_tasks()[DEMO_TASK_NAMES.index(task)]


__all__ = [
  "ASSETS",
  "DEMO_FAMILY",
  "DEMO_LIBRARY_DIR",
  "DEMO_MODEL_DIR",
  "DEMO_MIXTURE_NAME",
  "DEMO_MODEL_SIZE",
  "DEMO_TASK_NAMES",
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
  "register_demo_mixture",
  "register_demo_task_index_task",
  "register_demo_task_index_tasks",
  "register_demo_tasks",
  "register_wordnet_category_task",
  "register_wordnet_task",
]
