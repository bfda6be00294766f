"""The data layer: seqio tasks for GLUE, SuperGLUE, the QQP/MRPC transfer pairs, and users' local files.

Importing this package registers every built-in task and mixture with seqio (once; importing again does nothing), so
runs can name them: `--gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'"`. See `registry.py` for the
names, `benchmarks.py` for formats and metrics, `vocab.py` for where the vocabulary comes from,
`class_labels.py` for the class-label hook, `local_tasks.py` for tasks from JSONL/TSV files, and `cli.py` for
`prompt-tuning tasks list|show`.

Gin names (all under `prompt_tuning.data.`): `get_vocabulary`, `tfds_data_dir`, `class_labels_for_task`,
`register_local_task`.
"""

from prompt_tuning.data import tensorflow_setup

tensorflow_setup.hide_accelerators_from_tensorflow()

from prompt_tuning.data.class_labels import class_labels_for_task, get_class_labels  # noqa: E402
from prompt_tuning.data.errors import (  # noqa: E402
  DataConfigError,
  LocalDataError,
  UnknownTaskError,
  VocabularyNotConfiguredError,
)
from prompt_tuning.data.local_tasks import register_local_task  # noqa: E402
from prompt_tuning.data.registry import (  # noqa: E402
  all_names,
  builtin_mixture_names,
  builtin_task_names,
  get_task_or_mixture,
  register_builtin_tasks,
)
from prompt_tuning.data.sources import (  # noqa: E402
  set_tfds_data_dir,
  set_use_cached_tasks,
  tfds_data_dir,
  use_cached_tasks,
)
from prompt_tuning.data.vocab import get_vocabulary, output_features, set_vocabulary_path  # noqa: E402

register_builtin_tasks()

__all__ = [
  "DataConfigError",
  "LocalDataError",
  "UnknownTaskError",
  "VocabularyNotConfiguredError",
  "all_names",
  "builtin_mixture_names",
  "builtin_task_names",
  "class_labels_for_task",
  "get_class_labels",
  "get_task_or_mixture",
  "get_vocabulary",
  "output_features",
  "register_builtin_tasks",
  "register_local_task",
  "set_tfds_data_dir",
  "set_use_cached_tasks",
  "set_vocabulary_path",
  "tfds_data_dir",
  "use_cached_tasks",
]
