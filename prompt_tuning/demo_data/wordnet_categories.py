"""The demo's labeled task: "Is a cachalot an animal or a plant?", from WordNet's lexicographer classes.

WordNet files every synset under one of 45 lexicographer classes (lexnames(5WN)); two of them are noun.animal and
noun.plant. A *word* here is a one-word lowercase noun (at least three letters) whose most frequent sense (first in
`index.noun`) is filed under one of the two; its answer is that class. The word's definition (the first
`DEFINITION_WORDS` words of that sense's gloss) is part of the question, as the pretraining corpus writes entries:

    cachalot: large whale with a large cavity in the head containing spermaceti and oil; also a source of ambergris.
    Is a cachalot an animal or a plant? <extra_id_0>                        -> "<extra_id_0> animal"

`build_examples` (deterministic for a seed) samples `SPLIT_WORDS` words of each class into each split, so the labels
are balanced and no word occurs in two splits. The files are JSONL with columns word, definition, question, answer
("animal" / "plant") and target (the answer after the sentinel, see `wordnet_task.SENTINEL`); they ship in
prompt_tuning/assets/wordnet_categories.

Why this task for the demo (measured, prompt_tuning/assets/demo_t5/MODEL_CARD.md): the demo model's frozen encoder
separates the two classes (a linear probe on its mean output: 79% of held-out words), where it carries nothing a
probe can use for WordNet hypernymy (`wordnet_task`, 50%); so a prompt has something to draw on.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import gin

from prompt_tuning.demo_data import locations, wordnet
from prompt_tuning.demo_data.wordnet_task import SENTINEL, write_splits

# Lexicographer file numbers (lexnames(5WN)) and the answer each stands for.
CLASSES = {5: "animal", 20: "plant"}
LABELS = tuple(CLASSES.values())
CLASS_LABELS = tuple(f"{SENTINEL} {label}" for label in LABELS)
SPLIT_WORDS = {"train": 1500, "validation": 250, "test": 500}  # per class
DEFINITION_WORDS = 20
INPUT_TEMPLATE = "{word}: {definition}. {question} " + SENTINEL
_ONE_WORD = re.compile(r"^[a-z]{3,}$")


def question(word: str) -> str:
  """The question about `word`: "Is a cachalot an animal or a plant?" ("an" before a vowel)."""
  article = "an" if word[0] in "aeiou" else "a"
  return f"Is {article} {word} an animal or a plant?"


def candidate_words(wordnet_dir=wordnet.WORDNET_DIR) -> dict[str, list[dict]]:
  """{answer: [{word, definition}], sorted by word} of every eligible word (see the module docstring)."""
  synsets = {s.key: s for s in wordnet.read_synsets("noun", wordnet_dir)}
  found: dict[str, list[dict]] = {label: [] for label in LABELS}
  for lemma, (keys, _) in sorted(wordnet.read_noun_index(wordnet_dir).items()):
    synset = synsets.get(keys[0])
    if _ONE_WORD.match(lemma) and lemma not in LABELS and synset is not None and synset.lex_file in CLASSES:
      definition = " ".join(synset.definition.split()[:DEFINITION_WORDS])
      found[CLASSES[synset.lex_file]].append({"word": lemma, "definition": definition})
  return found


def build_examples(seed: int = 0, split_words: dict[str, int] = SPLIT_WORDS, wordnet_dir=wordnet.WORDNET_DIR):
  """{split: rows}: `split_words[split]` words of each class, no word in two splits, rows shuffled."""
  rng = random.Random(seed)
  found = candidate_words(wordnet_dir)
  for label, words in found.items():
    if len(words) < sum(split_words.values()):
      raise ValueError(f"only {len(words)} {label} words qualify; the splits ask for {sum(split_words.values())}")
    rng.shuffle(words)
  splits, start = {}, 0
  for split, count in split_words.items():
    rows = [
      {**entry, "question": question(entry["word"]), "answer": label, "target": f"{SENTINEL} {label}"}
      for label, words in found.items()
      for entry in words[start : start + count]
    ]
    rng.shuffle(rows)
    splits[split], start = rows, start + count
  return splits


def write_task(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
  """Writes the task's `{split}.jsonl` files into `out_dir`; returns the paths."""
  return write_splits(out_dir, build_examples(seed))


@gin.configurable(module="prompt_tuning.demo_data")
def register_wordnet_category_task(
  task_dir: str | Path | None = None, name: str | None = None, input_prefix: str = ""
) -> str:
  """Registers the task as a seqio task with class labels ("<extra_id_0> animal", "<extra_id_0> plant"); returns
  its name. The vocabulary is the globally configured one (the demo model's, VOCABULARY_PATH in gin).

  Args:
    task_dir: the folder of train/validation/test.jsonl (default: the shipped prompt_tuning/assets/wordnet_categories).
    name: the task name (default `wordnet_animal_or_plant`).
    input_prefix: text put before every input (`prompt_tuning.demo_data.register_demo_mixture`'s task sentinel).
  """
  from prompt_tuning.data import register_local_task

  folder = Path(task_dir) if task_dir is not None else locations.WORDNET_CATEGORY_TASK_DIR
  return register_local_task(
    name=name or locations.WORDNET_CATEGORY_TASK_NAME,
    train=str(folder / "train.jsonl"),
    validation=str(folder / "validation.jsonl"),
    test=str(folder / "test.jsonl"),
    input_template=input_prefix + INPUT_TEMPLATE,
    target_column="target",
    class_labels=list(CLASS_LABELS),
  )
