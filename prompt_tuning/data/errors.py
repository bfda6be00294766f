"""Errors of the data layer, each saying what was wrong and what to do about it.

All of them derive from `DataConfigError` (itself a `ValueError`), so a command line front end can catch one class and
print the message without a traceback.
"""

import difflib
from collections.abc import Iterable


class DataConfigError(ValueError):
  """A task, file or vocabulary is configured in a way the data layer cannot use."""


class UnknownTaskError(DataConfigError, KeyError):
  """A task or mixture name that is not registered."""

  def __init__(self, name: str, known_names: Iterable[str]):
    self.name = name
    self.suggestions = close_matches(name, known_names)
    hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
    super().__init__(
      f"unknown task or mixture {name!r}{hint} (run `prompt-tuning tasks list` to see every registered name)"
    )

  def __str__(self) -> str:
    # KeyError would otherwise print the message inside quotes.
    return self.args[0]


class VocabularyNotConfiguredError(DataConfigError):
  """No SentencePiece model path was given anywhere."""


class LocalDataError(DataConfigError):
  """A local (JSONL/TSV) task whose files, columns or labels do not fit its configuration."""


def close_matches(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
  """Returns up to `limit` names from `candidates` that look like `name`, best first."""
  candidates = list(candidates)
  matches = difflib.get_close_matches(name, candidates, n=limit, cutoff=0.6)
  if len(matches) < limit:
    # Also offer names that contain the query (e.g. "boolq" -> every boolq variant).
    matches += sorted(c for c in candidates if name and name in c and c not in matches)[: limit - len(matches)]
  return matches
