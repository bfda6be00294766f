"""The demo's shipped assets: the WordNet task files, their seqio registration, the demo model and its vocabulary."""

import json
from collections import Counter

import pytest

from prompt_tuning import demo_data
from prompt_tuning.demo_data import wordnet, wordnet_categories, wordnet_task

SPLITS = ("train", "validation", "test")
MAX_MODEL_BYTES = 25 * 1024 * 1024


def _rows(split):
  return [json.loads(line) for line in (demo_data.WORDNET_TASK_DIR / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rows():
  return {split: _rows(split) for split in SPLITS}


def test_task_files_are_small_balanced_and_well_formed(rows):
  sizes = {split: len(r) for split, r in rows.items()}
  assert sizes == {split: 2 * n for split, n in wordnet_task.SPLIT_WORDS.items()}
  for split_rows in rows.values():
    assert Counter(r["answer"] for r in split_rows) == {"yes": len(split_rows) // 2, "no": len(split_rows) // 2}
    for r in split_rows:
      assert r["question"] == wordnet_task.question(r["word"], r["category"])
      assert r["target"] == "<extra_id_0> " + r["answer"]
      assert 1 <= r["level"] <= wordnet_task.MAX_LEVELS
      assert r["definition"] and len(r["definition"].split()) <= wordnet_task.DEFINITION_WORDS
  for path in demo_data.WORDNET_TASK_DIR.glob("*.jsonl"):
    assert path.stat().st_size < 1_000_000


def test_no_word_leaks_between_splits(rows):
  words = {split: {r["word"] for r in split_rows} for split, split_rows in rows.items()}
  categories = {c for split_rows in rows.values() for c in (r["category"] for r in split_rows)}
  assert not words["train"] & words["test"]
  assert not words["train"] & words["validation"]
  assert not words["validation"] & words["test"]
  assert not (words["test"] | words["validation"]) & categories  # held-out words are never categories either


def test_each_word_has_one_positive_and_one_negative(rows):
  by_pair = {}
  for r in rows["test"]:
    by_pair.setdefault(r["pair"], []).append(r)
  assert all(sorted(x["answer"] for x in pair) == ["no", "yes"] for pair in by_pair.values())
  # No category gives its label away: each is used about as often for "yes" as for "no".
  skew = Counter()
  for split_rows in rows.values():
    for r in split_rows:
      skew[r["category"]] += 1 if r["answer"] == "yes" else -1
  assert max(abs(v) for v in skew.values()) <= wordnet_task.MAX_SKEW


def test_parse_wordnet_line():
  line = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 003 @ 02083346 n 0000 @ 01317541 n 0000 "
    '@i 09999999 n 0000 | a member of the genus Canis; "the dog barked all night"  '
  )
  synset = wordnet.parse_line(line)
  assert synset.key == "n:02084071"
  assert synset.lemmas == ("dog", "domestic dog", "Canis familiaris")
  assert synset.hypernyms == ("n:02083346", "n:01317541") and synset.instance_of == ("n:09999999",)
  assert synset.definition == "a member of the genus Canis"
  assert synset.examples == ("the dog barked all night",)
  assert synset.lex_file == 5  # noun.animal
  with pytest.raises(ValueError, match="not a WordNet synset line"):
    wordnet.parse_line("garbage")


def test_question_article():
  assert wordnet_task.question("poodle", "canine") == "Is a poodle a kind of canine?"
  assert wordnet_task.question("apple", "fruit") == "Is an apple a kind of fruit?"


def test_task_is_registered_with_class_labels():
  import seqio

  from prompt_tuning.data import get_class_labels

  name = demo_data.register_wordnet_task()
  assert name == demo_data.WORDNET_TASK_NAME
  assert get_class_labels(name) == ["<extra_id_0> no", "<extra_id_0> yes"]
  vocabulary = seqio.SentencePieceVocabulary(str(demo_data.DEMO_VOCABULARY), extra_ids=100)
  task = seqio.get_mixture_or_task(name)
  assert task.num_input_examples("test") == len(_rows("test"))
  example = next(
    task.source.get_dataset("test", shuffle=False).as_numpy_iterator()  # the raw text, before tokenizing
  )
  assert example["targets"].decode() in ("<extra_id_0> yes", "<extra_id_0> no")
  assert example["inputs"].decode().endswith("? <extra_id_0>")
  assert vocabulary.encode(example["inputs"].decode())[-1] == vocabulary.vocab_size - 1


def test_task_can_be_posed_with_the_definition():
  import seqio

  name = demo_data.register_wordnet_task(name="wordnet_hypernymy_defined", input_template=wordnet_task.WITH_DEFINITION)
  example = next(seqio.get_mixture_or_task(name).source.get_dataset("test", shuffle=False).as_numpy_iterator())
  first = _rows("test")[0]
  assert example["inputs"].decode() == f"{first['word']}: {first['definition']}. {first['question']} <extra_id_0>"


def test_shipped_model_loads_and_matches_its_vocabulary():
  import seqio

  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.models.configs import get_config

  files = list(demo_data.DEMO_MODEL_DIR.iterdir())
  assert sum(p.stat().st_size for p in files) <= MAX_MODEL_BYTES
  config, params = load_pretrained(demo_data.DEMO_MODEL_DIR)
  assert config.replace(dropout_rate=0.0) == get_config(demo_data.DEMO_MODEL_SIZE).replace(dropout_rate=0.0)
  embedding = params["token_embedder"]["embedding"]
  assert embedding.dtype.name == "float32"
  vocabulary = seqio.SentencePieceVocabulary(str(demo_data.DEMO_VOCABULARY), extra_ids=100)
  assert embedding.shape == (vocabulary.vocab_size, 256)
  assert vocabulary.encode("dog") and vocabulary.decode(vocabulary.encode("a kind of dog")) == "a kind of dog"
  assert vocabulary.vocab_size - 1 == vocabulary.encode("<extra_id_0>")[0]  # sentinels from the end
  card = (demo_data.DEMO_MODEL_DIR / "MODEL_CARD.md").read_text()
  for fact in ("WordNet 3.0", "public domain", "GPL", "make demo-model"):
    assert fact in card


FAMILY_ADDED_BYTES = 40_000_000  # what the family may add beside demo_t5's own folder (#17)


def test_demo_family_spans_ten_times_in_size_shares_one_vocabulary_and_fits_in_40_mb():
  import jax
  import numpy as np
  import seqio

  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.models.configs import get_config

  vocabulary = seqio.SentencePieceVocabulary(str(demo_data.DEMO_VOCABULARY), extra_ids=100)
  counts, added = {}, 0
  for size, folder in demo_data.DEMO_FAMILY.items():
    for lm_adapted in (False, True):
      path = demo_data.demo_model_dir(size, lm_adapted)
      assert path.name == folder + ("_lm" if lm_adapted else "")
      config, params = load_pretrained(path)
      assert config.replace(dropout_rate=0.0) == get_config(f"t5_1_1_{size}").replace(dropout_rate=0.0)
      assert params["token_embedder"]["embedding"].shape[0] == vocabulary.vocab_size
      count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
      facts = json.loads((path / "pretraining.json").read_text())
      assert facts["parameters"] == count and facts["steps"] > 0
      card = (path / "MODEL_CARD.md").read_text()
      assert card.startswith(f"# {path.name}:") and "{" not in card and "WordNet 3.0" in card
      if lm_adapted:
        span_facts = json.loads((demo_data.demo_model_dir(size) / "pretraining.json").read_text())
        assert facts["objective"] == "prefix_lm"
        assert facts["initialized_from"] == {"folder": folder, "steps": span_facts["steps"]}
        assert counts[size] == count
      counts[size] = count
      if (size, lm_adapted) != ("demo", False):
        assert not (path / "sentencepiece.model").exists()  # demo_t5's copy serves them all
        added += sum(p.stat().st_size for p in path.iterdir())
  assert max(counts.values()) >= 10 * min(counts.values())
  assert added <= FAMILY_ADDED_BYTES


def test_demo_model_path_picks_a_family_member_from_gin_and_names_the_family_on_a_typo():
  import gin

  gin.clear_config()
  try:
    gin.parse_config(["prompt_tuning.demo_data.demo_model_path.size = 'demo_3m'"])
    assert demo_data.demo_model_path() == str(demo_data.ASSETS / "demo_t5_3m")
    gin.parse_config(["prompt_tuning.demo_data.demo_model_path.lm_adapted = True"])
    assert demo_data.demo_model_path() == str(demo_data.ASSETS / "demo_t5_3m_lm")
  finally:
    gin.clear_config()
  assert demo_data.demo_model_path() == str(demo_data.DEMO_MODEL_DIR)
  with pytest.raises(ValueError, match="no demo model of size 'demo_2m'; the demo family is 'demo_1m', 'demo_3m'"):
    demo_data.demo_model_path("demo_2m")


def _category_rows(split):
  path = demo_data.WORDNET_CATEGORY_TASK_DIR / f"{split}.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_category_task_files_are_balanced_held_out_and_well_formed():
  rows = {split: _category_rows(split) for split in SPLITS}
  for split, split_rows in rows.items():
    count = wordnet_categories.SPLIT_WORDS[split]
    assert Counter(r["answer"] for r in split_rows) == {"animal": count, "plant": count}
    for r in split_rows:
      assert r["question"] == wordnet_categories.question(r["word"])
      assert r["target"] == "<extra_id_0> " + r["answer"]
      assert r["definition"] and len(r["definition"].split()) <= wordnet_categories.DEFINITION_WORDS
  words = {split: {r["word"] for r in split_rows} for split, split_rows in rows.items()}
  assert sum(len(w) for w in words.values()) == sum(len(r) for r in rows.values())  # each word once, in one split
  assert wordnet_categories.question("apple") == "Is an apple an animal or a plant?"
  for path in demo_data.WORDNET_CATEGORY_TASK_DIR.glob("*.jsonl"):
    assert path.stat().st_size < 1_000_000


@pytest.mark.skipif(not (wordnet.WORDNET_DIR / "data.noun").exists(), reason="needs Debian's wordnet-base")
def test_category_task_files_are_rebuilt_byte_for_byte_from_wordnet(tmp_path):
  paths = wordnet_categories.write_task(tmp_path)
  for split, path in paths.items():
    assert path.read_bytes() == (demo_data.WORDNET_CATEGORY_TASK_DIR / f"{split}.jsonl").read_bytes()
  # ...and each answer is the lexicographer class of the word's most frequent sense.
  synsets = {s.key: s for s in wordnet.read_synsets("noun")}
  index = wordnet.read_noun_index()
  for r in _category_rows("test")[:50]:
    assert wordnet_categories.CLASSES[synsets[index[r["word"]][0][0]].lex_file] == r["answer"]


def test_category_task_is_registered_with_class_labels():
  import seqio

  from prompt_tuning.data import get_class_labels

  name = demo_data.register_wordnet_category_task()
  assert name == demo_data.WORDNET_CATEGORY_TASK_NAME
  assert get_class_labels(name) == ["<extra_id_0> animal", "<extra_id_0> plant"]
  example = next(seqio.get_mixture_or_task(name).source.get_dataset("test", shuffle=False).as_numpy_iterator())
  first = _category_rows("test")[0]
  assert example["inputs"].decode() == f"{first['word']}: {first['definition']}. {first['question']} <extra_id_0>"
  assert example["targets"].decode() == first["target"]


def test_derived_tasks_are_rebuilt_from_the_shipped_files_and_hold_no_word_twice(tmp_path):
  import shutil

  for source in (demo_data.WORDNET_TASK_DIR, demo_data.WORDNET_CATEGORY_TASK_DIR):
    shutil.copytree(source, tmp_path / source.name)
  written = wordnet_task.write_derived_tasks(tmp_path)
  for folder, paths in written.items():
    for split, path in paths.items():
      assert path.read_bytes() == (demo_data.ASSETS / folder / f"{split}.jsonl").read_bytes(), (folder, split)
  gloss = {
    split: [json.loads(line) for line in p.read_text().splitlines()]
    for split, p in written[demo_data.WORDNET_GLOSS_TO_WORD_DIR.name].items()
  }
  words = Counter(r["word"] for rows in gloss.values() for r in rows)
  assert max(words.values()) == 1 and len(words) > 5000  # each word once, in one split
  for split in SPLITS:  # the word-to-category target is the word's positive category in the hypernymy task
    positive = {r["word"]: r["category"] for r in _rows(split) if r["answer"] == "yes"}
    named = [
      json.loads(line) for line in written[demo_data.WORDNET_WORD_TO_CATEGORY_DIR.name][split].read_text().splitlines()
    ]
    assert {r["word"]: r["category"] for r in named} == positive
    assert all(r["target"] == f"<extra_id_0> {r['category']}" for r in named)


def test_demo_family_of_tasks_is_registered():
  import seqio

  names = demo_data.register_demo_tasks()
  assert names == ["wordnet_animal_or_plant", "wordnet_hypernymy", "wordnet_word_to_category", "wordnet_gloss_to_word"]
  example = next(seqio.get_mixture_or_task(names[2]).source.get_dataset("test", shuffle=False).as_numpy_iterator())
  assert example["inputs"].decode().endswith(" is a kind of <extra_id_0>")
  assert example["targets"].decode().startswith("<extra_id_0> ")
  example = next(seqio.get_mixture_or_task(names[3]).source.get_dataset("test", shuffle=False).as_numpy_iterator())
  assert example["inputs"].decode().startswith("<extra_id_0>: ")


def test_the_demo_mixture_gives_each_task_its_index():
  """register_demo_mixture: the four tasks' task_index_ variants at equal rates, each input the plain task's after its
  task's sentinel, which the demo vocabulary encodes as the task id a multi-task method reads (inputs.task_ids)."""
  import numpy as np
  import seqio

  from prompt_tuning import inputs

  mixture = seqio.get_mixture_or_task(demo_data.register_demo_mixture())
  members = [f"task_index_{name}" for name in demo_data.DEMO_TASK_NAMES]
  assert sorted(t.name for t in mixture.tasks) == sorted(members) and {mixture.get_rate(t) for t in mixture.tasks} == {
    1.0
  }
  vocabulary = seqio.SentencePieceVocabulary(str(demo_data.DEMO_VOCABULARY), extra_ids=100)
  plain = demo_data.register_demo_tasks()
  for k, name in enumerate(members):
    assert demo_data.register_demo_task_index_task(plain[k]) == name
    first, indexed = (
      next(seqio.get_mixture_or_task(n).source.get_dataset("validation", shuffle=False).as_numpy_iterator())
      for n in (plain[k], name)
    )
    assert indexed["inputs"].decode() == f"<extra_id_{k}> " + first["inputs"].decode()
    assert indexed["targets"] == first["targets"]
    tokens = np.array([vocabulary.encode(indexed["inputs"].decode())])
    assert inputs.task_ids({"encoder_input_tokens": tokens}, vocabulary.vocab_size, 4).tolist() == [k]
  with pytest.raises(ValueError, match="'hypernymy' is not a demo task; the demo tasks are 'wordnet_animal_or_plant'"):
    demo_data.register_demo_task_index_task("hypernymy")
