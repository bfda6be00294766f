"""Where the shipped assets are, and the demo tasks' names: what the task modules need without importing the
package that registers them lazily (`prompt_tuning.demo_data` re-exports them)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WORDNET_TASK_DIR = ASSETS / "wordnet_task"
WORDNET_TASK_NAME = "wordnet_hypernymy"
WORDNET_CATEGORY_TASK_DIR = ASSETS / "wordnet_categories"
WORDNET_CATEGORY_TASK_NAME = "wordnet_animal_or_plant"
