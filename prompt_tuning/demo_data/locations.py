"""Where the shipped assets are, and the demo tasks' names: what the task modules need without importing the
package that registers them lazily (`prompt_tuning.demo_data` re-exports them)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WORDNET_TASK_DIR = ASSETS / "wordnet_task"
WORDNET_TASK_NAME = "wordnet_hypernymy"
WORDNET_CATEGORY_TASK_DIR = ASSETS / "wordnet_categories"
WORDNET_CATEGORY_TASK_NAME = "wordnet_animal_or_plant"
# The generation tasks derived from the two above (`wordnet_task.write_derived_tasks`): name the word's category, and
# name the word from its definition.
WORDNET_WORD_TO_CATEGORY_DIR = ASSETS / "wordnet_word_to_category"
WORDNET_WORD_TO_CATEGORY_NAME = "wordnet_word_to_category"
WORDNET_GLOSS_TO_WORD_DIR = ASSETS / "wordnet_gloss_to_word"
WORDNET_GLOSS_TO_WORD_NAME = "wordnet_gloss_to_word"
