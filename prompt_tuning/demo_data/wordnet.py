"""A reader for WordNet 3.0's database files (Debian `wordnet-base`: /usr/share/wordnet/data.{noun,verb,adj,adv}).

Each non-comment line of a `data.POS` file is one synset:

    offset lex_filenum ss_type w_cnt (word lex_id)... p_cnt (ptr_symbol offset pos source/target)... | gloss

The gloss holds a definition, then optional examples in double quotes, separated by semicolons. Only what the demo
needs is kept: the lemmas, the hypernym pointers ("@", and "@i" for instances), the definition and the examples.

WordNet 3.0 Copyright 2006 by Princeton University; see prompt_tuning/assets/demo_t5/MODEL_CARD.md for the licence.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_HYPERNYM = "@"
_INSTANCE_HYPERNYM = "@i"
_EXAMPLE = re.compile(r'"([^"]+)"')
_ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")  # Syntactic markers of adjectives: big(a), galore(ip).


@dataclasses.dataclass(frozen=True)
class Synset:
  """One WordNet synset.

  Attributes:
    key: "n:02084071" (part of speech letter and byte offset), unique across the four files.
    lemmas: the words of the synset, underscores turned into spaces ("domestic dog").
    hypernyms: keys of the synset's hypernyms ("@": a dog is a kind of canine).
    instance_of: keys of the classes the synset is an instance of ("@i": Paris is a city).
    definition: the gloss without its examples.
    examples: the quoted usage examples of the gloss.
    lex_file: the number of the lexicographer file the synset comes from (WordNet's coarse semantic classes, see
      lexnames(5WN): 5 noun.animal, 18 noun.person, 20 noun.plant, ...).
  """

  key: str
  lemmas: tuple[str, ...]
  hypernyms: tuple[str, ...]
  instance_of: tuple[str, ...]
  definition: str
  examples: tuple[str, ...]
  lex_file: int


def _pos_letter(ss_type: str) -> str:
  return "a" if ss_type == "s" else ss_type  # Satellite adjectives share the adjective file.


def _split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
  examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if e.strip())
  definition = _EXAMPLE.sub("", gloss)
  definition = re.sub(r"(\s*;\s*)+$", "", definition.strip()).strip(" ;")
  return definition, examples


def parse_line(line: str) -> Synset:
  """Parses one synset line of a `data.POS` file.

  Raises:
    ValueError: a line that does not follow the format (with the line's start, to find it).
  """
  try:
    fields, gloss = line.split(" | ", 1) if " | " in line else (line, "")
    parts = fields.split()
    offset, lex_file, ss_type, word_count = parts[0], int(parts[1]), parts[2], int(parts[3], 16)
    words = parts[4 : 4 + 2 * word_count : 2]
    at = 4 + 2 * word_count
    pointer_count = int(parts[at])
    pointers = [parts[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(pointer_count)]
  except (IndexError, ValueError) as e:
    raise ValueError(f"not a WordNet synset line: {line[:80]!r}") from e
  lemmas = tuple(_ADJECTIVE_MARKER.sub("", w).replace("_", " ") for w in words)
  hypernyms = tuple(f"{_pos_letter(p[2])}:{p[1]}" for p in pointers if p[0] == _HYPERNYM)
  instance_of = tuple(f"{_pos_letter(p[2])}:{p[1]}" for p in pointers if p[0] == _INSTANCE_HYPERNYM)
  definition, examples = _split_gloss(gloss)
  return Synset(f"{_pos_letter(ss_type)}:{offset}", lemmas, hypernyms, instance_of, definition, examples, lex_file)


def read_synsets(pos: str, wordnet_dir: str | Path = WORDNET_DIR) -> Iterator[Synset]:
  """Yields the synsets of one part of speech ("noun", "verb", "adj" or "adv").

  Raises:
    FileNotFoundError: WordNet is not installed, with the command that installs it.
  """
  path = Path(wordnet_dir) / f"data.{pos}"
  if not path.exists():
    raise FileNotFoundError(
      f"{path} does not exist: install WordNet's database (Debian/Ubuntu: `apt-get install wordnet-base`) or pass "
      "the folder holding data.noun, data.verb, data.adj and data.adv"
    )
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if not line.startswith("  "):  # The licence header lines start with two spaces.
        yield parse_line(line.rstrip("\n"))


def read_noun_index(wordnet_dir: str | Path = WORDNET_DIR) -> dict[str, tuple[tuple[str, ...], int]]:
  """{lemma: (its noun synset keys, most frequent sense first; tagged sense count)} from `index.noun`."""
  index = {}
  with open(Path(wordnet_dir) / "index.noun", encoding="utf-8", errors="replace") as f:
    for line in f:
      if line.startswith("  "):
        continue
      parts = line.split()
      synset_count, pointer_count = int(parts[2]), int(parts[3])
      tagged = int(parts[5 + pointer_count])
      offsets = parts[6 + pointer_count : 6 + pointer_count + synset_count]
      index[parts[0].replace("_", " ")] = (tuple(f"n:{o}" for o in offsets), tagged)
  return index


def read_all(wordnet_dir: str | Path = WORDNET_DIR) -> dict[str, Synset]:
  """Every synset of the four files, by key."""
  return {s.key: s for pos in PARTS_OF_SPEECH for s in read_synsets(pos, wordnet_dir)}
