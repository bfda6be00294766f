"""The demo's labeled task, derived from WordNet's noun hierarchy: "Is a poodle a kind of canine?" -> yes / no.

Construction (`build_examples`, deterministic for a seed):

- *Categories* are noun synsets with at least `MIN_DESCENDANTS` hyponyms below them and at least `MIN_DEPTH` steps
  below the root (so not "entity" or "object"), named by a one-word lowercase lemma.
- *Query words* are one-word lowercase nouns whose most frequent sense is a synset with a category among its
  ancestors 1 to `MAX_LEVELS` steps up, that occur in WordNet's sense-tagged corpus (common words), and that are not
  themselves category names.
- Each query word gives a *pair*: a positive -- a category among those ancestors (the transitive closure of
  hypernymy, up to `MAX_LEVELS` levels) -- and a negative: a category of the same depth in the hierarchy (within one
  level) that is an ancestor of none of the word's senses. Same-depth categories are as general as the positive one
  (not "entity" against "poodle"), so the question cannot be answered from how specific the category is; some come
  from the same branch ("feline" for a dog), most from others. Among the candidates, one of those most often used as
  a positive so far is chosen (seeded), and no category is used as a positive more than `MAX_SKEW` times more often
  than as a negative (or the reverse), so the label cannot be guessed from the category alone. Labels are balanced
  by construction (one "yes" and one "no" per word).
- The query words are split into train / validation / test: no query word appears, as query or as category, in
  another split. Categories are shared (a category is a class, the words are what is held out).

The files are JSONL with columns question, answer ("yes" / "no"), target (the answer after the sentinel, what the
model is trained to produce: see `SENTINEL`), word, definition (the first `DEFINITION_WORDS` words of the definition
of the word's most frequent sense), category, level (steps from the word's synset to the positive category) and pair
(the pair's number). They ship in prompt_tuning/assets/wordnet_task. The seqio task poses the question alone
(`QUESTION_ONLY`) or after the definition (`WITH_DEFINITION`, gin:
`prompt_tuning.demo_data.register_wordnet_task.input_template`).

The demo family of tasks (SPoT-style transfer between them: `prompt_tuning.transfer`) adds two generation tasks
derived from the shipped files of this task and of the animal-or-plant one (`write_derived_tasks`; they ship in
prompt_tuning/assets/wordnet_word_to_category and wordnet_gloss_to_word), posed as the pretraining corpus writes a
dictionary entry, with the answer as the masked span:

- `wordnet_word_to_category`: "poodle: an intelligent dog ... A poodle is a kind of <extra_id_0>" -> "<extra_id_0>
  canine", one row per query word (its positive category: WordNet hypernymy up to `MAX_LEVELS` levels);
- `wordnet_gloss_to_word`: "<extra_id_0>: an intelligent dog with ..." -> "<extra_id_0> poodle", one row per word of
  either task (a word found in two splits of the two tasks is left out).

Every shipped word is a noun, so a part-of-speech task has nothing to draw on. `prompt_tuning.demo_data.
register_demo_tasks` registers the four tasks and returns their names.
"""

from __future__ import annotations

import collections
import functools
import json
import random
import re
from pathlib import Path

import gin

from prompt_tuning.demo_data import locations, wordnet

MIN_DESCENDANTS = 12
MIN_DEPTH = 4
MAX_LEVELS = 3
MAX_SKEW = 2  # A category's (uses as positive) - (uses as negative) stays within [-MAX_SKEW, MAX_SKEW].
SPLIT_WORDS = {"train": 1500, "validation": 250, "test": 500}
LABELS = ("no", "yes")
# The demo model was pretrained on span corruption only, so its decoder always starts with a sentinel. As in Lester
# et al. 2021 (section 3.2, "Span Corruption + Sentinel"), the task is posed as one: the input ends with the sentinel
# and the target is the sentinel followed by the answer, "<extra_id_0> yes".
SENTINEL = "<extra_id_0>"
CLASS_LABELS = tuple(f"{SENTINEL} {label}" for label in LABELS)
# The two ways to pose a question: alone, or after the word's dictionary definition (the first DEFINITION_WORDS words
# of its gloss, as the pretraining corpus writes entries: "poodle: an intelligent dog with ..."), which puts what the
# model needs to know in its input rather than asking it to recall a fact seen once in pretraining.
QUESTION_ONLY = "{question} " + SENTINEL
WITH_DEFINITION = "{word}: {definition}. {question} " + SENTINEL
DEFINITION_WORDS = 20
_ONE_WORD = re.compile(r"^[a-z]{3,}$")
_SYNSETS: dict[int, dict] = {}


def article(word: str) -> str:
  """ "an" before a vowel, else "a"."""
  return "an" if word[0] in "aeiou" else "a"


def question(word: str, category: str) -> str:
  """The input text: "Is a poodle a kind of canine?" ("an" before a vowel)."""
  return f"Is {article(word)} {word} a kind of {category}?"


def definition(synset: wordnet.Synset) -> str:
  """The synset's dictionary definition, cut to its first `DEFINITION_WORDS` words (no examples)."""
  words = synset.definition.split()
  return " ".join(words[:DEFINITION_WORDS])


def _children(synsets: dict[str, wordnet.Synset]) -> dict[str, list[str]]:
  children = collections.defaultdict(list)
  for key, synset in synsets.items():
    for parent in synset.hypernyms:
      children[parent].append(key)
  return children


def _ancestors(key: str, synsets: dict[str, wordnet.Synset], max_levels: int | None = None) -> dict[str, int]:
  """{ancestor key: fewest hypernym steps up} of a synset (regular hypernyms only)."""
  found, frontier, level = {}, [key], 0
  while frontier and (max_levels is None or level < max_levels):
    level += 1
    frontier = [p for k in frontier for p in synsets[k].hypernyms if p in synsets and p not in found]
    for parent in frontier:
      found.setdefault(parent, level)
  return found


def _descendant_counts(children: dict[str, list[str]], keys) -> dict[str, int]:
  counts: dict[str, int] = {}

  def count(key: str) -> int:
    if key not in counts:
      counts[key] = 0  # Guards against cycles (WordNet has none among nouns).
      counts[key] = sum(1 + count(c) for c in children.get(key, []))
    return counts[key]

  for key in keys:
    count(key)
  return counts


def categories(synsets: dict[str, wordnet.Synset]) -> dict[str, str]:
  """{synset key: category name} of the synsets that may be asked about (see the module docstring)."""
  nouns = {k: s for k, s in synsets.items() if k.startswith("n:")}
  counts = _descendant_counts(_children(nouns), nouns)
  chosen = {}
  for key, synset in nouns.items():
    name = next((lemma for lemma in synset.lemmas if _ONE_WORD.match(lemma)), None)
    depth = max(_ancestors(key, nouns).values(), default=0)
    if name and counts[key] >= MIN_DESCENDANTS and depth >= MIN_DEPTH:
      chosen[key] = name
  return chosen


def _query_words(index, synsets, category_names: set[str]) -> list[tuple[str, str]]:
  """(word, its most frequent synset) for every eligible query word, sorted."""
  words = []
  for lemma, (keys, tagged) in sorted(index.items()):
    if _ONE_WORD.match(lemma) and tagged >= 1 and lemma not in category_names and keys[0] in synsets:
      words.append((lemma, keys[0]))
  return words


def _same_depth(synsets, names) -> dict[str, list[str]]:
  """{category: the other categories of about its depth (within one level)}: candidates for its negatives."""
  depth = {k: _depth(k, synsets) for k in names}
  by_depth = collections.defaultdict(list)
  for key in sorted(names):
    by_depth[depth[key]].append(key)
  return {
    key: [c for d in (depth[key] - 1, depth[key], depth[key] + 1) for c in by_depth.get(d, []) if c != key]
    for key in names
  }


@functools.cache
def _depth_of(key: str, synsets_id: int) -> int:
  return max(_ancestors(key, _SYNSETS[synsets_id]).values(), default=0)


def _depth(key: str, synsets: dict[str, wordnet.Synset]) -> int:
  """Hypernym steps from `key` up to the root, along the longest path."""
  _SYNSETS[id(synsets)] = synsets
  return _depth_of(key, id(synsets))


def _pair(word, key, index, synsets, names, relatives, used, rng) -> dict | None:
  """One positive and one negative question about `word`, or None when no category fits."""
  near = _ancestors(key, synsets, MAX_LEVELS)
  positives = sorted(
    (level, k) for k, level in near.items() if k in names and names[k] != word and used[names[k]] < MAX_SKEW
  )
  if not positives:
    return None
  every_sense_ancestor = set()
  for sense in index[word][0]:
    if sense in synsets:
      every_sense_ancestor |= set(_ancestors(sense, synsets)) | {sense}
  for level, positive in sorted(positives, key=lambda p: (used[names[p[1]]], p)):
    candidates = [
      c
      for c in relatives[positive]
      if c not in every_sense_ancestor and names[c] not in (word, names[positive]) and used[names[c]] > -MAX_SKEW
    ]
    if candidates:
      most_used = max(used[names[c]] for c in candidates)
      negative = rng.choice(sorted(c for c in candidates if used[names[c]] == most_used))
      return {
        "word": word,
        "positive": names[positive],
        "negative": names[negative],
        "level": level,
        "definition": definition(synsets[key]),
      }
  return None


def build_pairs(wordnet_dir=wordnet.WORDNET_DIR, seed: int = 0, limit: int | None = None) -> list[dict]:
  """(word, positive category, negative category) pairs for the query words in a seeded random order.

  The balance of each category (`MAX_SKEW`) holds over the pairs returned, so over any `limit`.
  """
  rng = random.Random(seed)
  synsets = {k: s for k, s in wordnet.read_all(wordnet_dir).items() if k.startswith("n:")}
  index = wordnet.read_noun_index(wordnet_dir)
  names = categories(synsets)
  relatives = _same_depth(synsets, names)
  words = _query_words(index, synsets, set(names.values()))
  rng.shuffle(words)
  used = collections.Counter()  # category name -> (times as positive) - (times as negative)
  pairs = []
  for word, key in words:
    pair = _pair(word, key, index, synsets, names, relatives, used, rng)
    if pair:
      used[pair["positive"]] += 1
      used[pair["negative"]] -= 1
      pairs.append(pair)
      if limit is not None and len(pairs) >= limit:
        break
  return pairs


def _rows(pairs: list[dict], first_pair: int) -> list[dict]:
  rows = []
  for number, pair in enumerate(pairs, start=first_pair):
    for category, answer in ((pair["positive"], "yes"), (pair["negative"], "no")):
      rows.append(
        {
          "question": question(pair["word"], category),
          "answer": answer,
          "target": f"{SENTINEL} {answer}",
          "word": pair["word"],
          "definition": pair["definition"],
          "category": category,
          "level": pair["level"],
          "pair": number,
        }
      )
  return rows


def build_examples(seed: int = 0, split_words: dict[str, int] = SPLIT_WORDS) -> dict[str, list[dict]]:
  """{split: rows}, split by query word (see the module docstring); the rows of each split are shuffled."""
  rng = random.Random(seed + 1)
  pairs = build_pairs(seed=seed, limit=sum(split_words.values()))
  if len(pairs) < sum(split_words.values()):
    raise ValueError(f"only {len(pairs)} words qualify; the splits ask for {sum(split_words.values())}")
  splits, start = {}, 0
  for split, count in split_words.items():
    rows = _rows(pairs[start : start + count], start)
    rng.shuffle(rows)
    splits[split], start = rows, start + count
  return splits


def write_splits(out_dir: str | Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
  """Writes `{split}.jsonl` (one row per line, keys sorted) for each split into `out_dir`; returns the paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {}
  for split, rows in splits.items():
    paths[split] = out_dir / f"{split}.jsonl"
    paths[split].write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
  return paths


def write_task(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
  """Writes the task's `{split}.jsonl` files into `out_dir`; returns the paths."""
  return write_splits(out_dir, build_examples(seed))


@gin.configurable(module="prompt_tuning.demo_data")
def register_wordnet_task(
  task_dir: str | Path | None = None,
  name: str | None = None,
  input_template: str = QUESTION_ONLY,
  input_prefix: str = "",
) -> str:
  """Registers the task as a seqio task with class labels ("<extra_id_0> no", "<extra_id_0> yes"); returns its name.

  The inputs are the questions followed by the sentinel, the targets the sentinel and "yes" or "no" (see
  `SENTINEL`); the vocabulary is the globally configured one (the demo
  model's: `prompt_tuning.data.set_vocabulary_path(DEMO_VOCABULARY)` or VOCABULARY_PATH in gin).

  Args:
    task_dir: the folder of train/validation/test.jsonl (default: the shipped prompt_tuning/assets/wordnet_task).
    name: the task name (default `wordnet_hypernymy`).
    input_template: how the input is written from the row's columns (`QUESTION_ONLY` or `WITH_DEFINITION`).
    input_prefix: text put before every input (`prompt_tuning.demo_data.register_demo_mixture`'s task sentinel).
  """
  from prompt_tuning.data import register_local_task

  folder = Path(task_dir) if task_dir is not None else locations.WORDNET_TASK_DIR
  return register_local_task(
    name=name or locations.WORDNET_TASK_NAME,
    train=str(folder / "train.jsonl"),
    validation=str(folder / "validation.jsonl"),
    test=str(folder / "test.jsonl"),
    input_template=input_prefix + input_template,
    target_column="target",
    class_labels=list(CLASS_LABELS),
  )


DERIVED_SPLITS = ("train", "validation", "test")


def _read_rows(folder: Path) -> dict[str, list[dict]]:
  return {
    split: [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    for split in DERIVED_SPLITS
  }


def word_to_category_rows(hypernymy: dict[str, list[dict]]) -> dict[str, list[dict]]:
  """{split: rows} of `wordnet_word_to_category` from this task's rows: each word's positive category, in the order
  of the words' pairs."""
  out = {}
  for split, rows in hypernymy.items():
    positives = sorted((r for r in rows if r["answer"] == "yes"), key=lambda r: r["pair"])
    out[split] = [
      {
        "input": f"{r['word']}: {r['definition']}. {article(r['word']).capitalize()} {r['word']} is a kind of "
        + SENTINEL,
        "target": f"{SENTINEL} {r['category']}",
        "word": r["word"],
        "category": r["category"],
      }
      for r in positives
    ]
  return out


def gloss_to_word_rows(*sources: dict[str, list[dict]]) -> dict[str, list[dict]]:
  """{split: rows} of `wordnet_gloss_to_word`: each word of the sources once, in the split the sources agree on
  (a word two sources put in different splits is left out, so no word is both trained on and tested), sorted."""
  splits_of: dict[str, set[str]] = collections.defaultdict(set)
  definitions: dict[str, str] = {}
  for source in sources:
    for split, rows in source.items():
      for r in rows:
        splits_of[r["word"]].add(split)
        definitions.setdefault(r["word"], r["definition"])
  out: dict[str, list[dict]] = {split: [] for split in DERIVED_SPLITS}
  for word in sorted(splits_of):
    if len(splits_of[word]) == 1:
      (split,) = splits_of[word]
      out[split].append({"input": f"{SENTINEL}: {definitions[word]}.", "target": f"{SENTINEL} {word}", "word": word})
  return out


def write_derived_tasks(assets: str | Path = locations.ASSETS) -> dict[str, dict[str, Path]]:
  """Writes the derived tasks' files from the shipped hypernymy and animal-or-plant files under `assets`; returns
  {task folder: {split: path}}."""
  assets = Path(assets)
  hypernymy = _read_rows(assets / locations.WORDNET_TASK_DIR.name)
  categories = _read_rows(assets / locations.WORDNET_CATEGORY_TASK_DIR.name)
  return {
    locations.WORDNET_WORD_TO_CATEGORY_DIR.name: write_splits(
      assets / locations.WORDNET_WORD_TO_CATEGORY_DIR.name, word_to_category_rows(hypernymy)
    ),
    locations.WORDNET_GLOSS_TO_WORD_DIR.name: write_splits(
      assets / locations.WORDNET_GLOSS_TO_WORD_DIR.name, gloss_to_word_rows(hypernymy, categories)
    ),
  }


def _register_derived(name: str, folder: Path, input_prefix: str) -> str:
  from prompt_tuning.data import register_local_task

  return register_local_task(
    name=name,
    train=str(folder / "train.jsonl"),
    validation=str(folder / "validation.jsonl"),
    test=str(folder / "test.jsonl"),
    input_template=input_prefix + "{input}",
    target_column="target",
  )


@gin.configurable(module="prompt_tuning.demo_data")
def register_word_to_category_task(name: str | None = None, input_prefix: str = "") -> str:
  """Registers `wordnet_word_to_category` (free text: the category's name after the sentinel); returns its name.
  `name` and `input_prefix` (text before every input) as for `register_wordnet_task`."""
  return _register_derived(
    name or locations.WORDNET_WORD_TO_CATEGORY_NAME, locations.WORDNET_WORD_TO_CATEGORY_DIR, input_prefix
  )


@gin.configurable(module="prompt_tuning.demo_data")
def register_gloss_to_word_task(name: str | None = None, input_prefix: str = "") -> str:
  """Registers `wordnet_gloss_to_word` (free text: the word after the sentinel); returns its name. `name` and
  `input_prefix` (text before every input) as for `register_wordnet_task`."""
  return _register_derived(
    name or locations.WORDNET_GLOSS_TO_WORD_NAME, locations.WORDNET_GLOSS_TO_WORD_DIR, input_prefix
  )
