"""The demo model's pretraining text: WordNet's glosses and examples plus the King James Bible, built offline.

Both come from Debian packages, so the corpus is rebuilt byte for byte on any machine:

- WordNet 3.0 (`apt-get install wordnet-base`): every synset becomes a dictionary entry,
  "dog, domestic dog, Canis familiaris (canine, domestic animal): a member of the genus Canis ... . the dog barked
  all night." -- its lemmas, the first lemma of each direct hypernym in parentheses, the definition and the examples.
- the King James Version (`apt-get install bible-kjv`): the `bible` program prints the public-domain text of
  `bible-kjv-text`; each chapter becomes one passage, without verse numbers. The program (GPL) is only run as a tool.

Entries are grouped into passages (16 WordNet entries, or one Bible chapter, per line) and the passages shuffled with
a fixed seed, so both sources are spread over the whole file. One passage in a hundred goes to a validation file.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from prompt_tuning.demo_data import wordnet

BIBLE_RANGE = "gen1:1-rev22:21"
ENTRIES_PER_PASSAGE = 16
VALIDATION_EVERY = 100
_VERSE_REFERENCE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def wordnet_entry(synset: wordnet.Synset, synsets: dict[str, wordnet.Synset]) -> str:
  """One synset as a dictionary entry (see the module docstring)."""
  head = ", ".join(synset.lemmas)
  parents = [synsets[k].lemmas[0] for k in synset.hypernyms + synset.instance_of if k in synsets]
  if parents:
    head += f" ({', '.join(parents)})"
  sentences = [synset.definition] + list(synset.examples)
  return f"{head}: " + " ".join(s.rstrip(".") + "." for s in sentences if s)


def wordnet_entries(wordnet_dir: str | Path = wordnet.WORDNET_DIR) -> list[str]:
  """Every WordNet synset as an entry, in file order (noun, verb, adj, adv)."""
  synsets = wordnet.read_all(wordnet_dir)
  return [wordnet_entry(s, synsets) for s in synsets.values()]


def bible_verses(program: str = "bible") -> Iterator[tuple[str, str]]:
  """Yields (book and chapter, verse text) for every verse of the King James Version, in order.

  Raises:
    FileNotFoundError: the `bible` program is not installed, with the command that installs it.
  """
  if shutil.which(program) is None:
    raise FileNotFoundError(
      f"the {program!r} program is not installed: `apt-get install bible-kjv` (it prints the public-domain KJV text)"
    )
  out = subprocess.run(
    [program, "-f", BIBLE_RANGE], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
  )
  for line in out.stdout.splitlines():
    match = _VERSE_REFERENCE.match(line.strip())
    if match:
      yield f"{match.group(1)}{match.group(2)}", match.group(4).strip()


def bible_chapters(program: str = "bible") -> list[str]:
  """The King James Version, one chapter a passage (verse numbers dropped)."""
  chapters: dict[str, list[str]] = {}
  for chapter, text in bible_verses(program):
    chapters.setdefault(chapter, []).append(text)
  return [" ".join(verses) for verses in chapters.values()]


def passages(wordnet_dir: str | Path = wordnet.WORDNET_DIR, seed: int = 0) -> list[str]:
  """All passages of the corpus, shuffled with `seed`."""
  rng = random.Random(seed)
  entries = wordnet_entries(wordnet_dir)
  rng.shuffle(entries)
  grouped = [" ".join(entries[i : i + ENTRIES_PER_PASSAGE]) for i in range(0, len(entries), ENTRIES_PER_PASSAGE)]
  everything = grouped + bible_chapters()
  rng.shuffle(everything)
  return everything


def write_corpus(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
  """Writes `train.txt` and `validation.txt` (one passage a line) into `out_dir`; returns their paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  lines = passages(seed=seed)
  splits = {
    "train": [p for i, p in enumerate(lines) if i % VALIDATION_EVERY],
    "validation": [p for i, p in enumerate(lines) if not i % VALIDATION_EVERY],
  }
  paths = {}
  for split, texts in splits.items():
    paths[split] = out_dir / f"{split}.txt"
    paths[split].write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
  return paths


def sentences(path: str | Path) -> Iterator[str]:
  """The corpus cut back into sentences (for SentencePiece training, which skips very long lines)."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      for sentence in re.split(r"(?<=[.;:?!])\s+", line.strip()):
        if sentence:
          yield sentence
