"""The T5 SentencePiece vocabulary of every task, resolved from configuration, never downloaded.

Where the SentencePiece model comes from, first match wins:

1. an explicit `path` argument of `get_vocabulary`, which gin can bind:
   `prompt_tuning.data.get_vocabulary.path = "/models/t5/sentencepiece.model"`;
2. `set_vocabulary_path(path)` (what `prompt-tuning tasks show --vocab PATH` calls);
3. the environment variable `PROMPT_TUNING_VOCAB`;
4. otherwise `VocabularyNotConfiguredError`, saying how to set one of the above.

Tasks are registered on import, before any of that is known, so their output features hold `DEFERRED_VOCABULARY`: a
`seqio.SentencePieceVocabulary` that looks the path up (through `get_vocabulary`, so gin bindings apply) only when
it first tokenizes or decodes, and again if the configured path changes later.
"""

import os

import gin
import seqio
import tensorflow as tf

from prompt_tuning.data.errors import VocabularyNotConfiguredError

ENV_VARIABLE = "PROMPT_TUNING_VOCAB"
T5_EXTRA_IDS = 100  # <extra_id_0> ... <extra_id_99>, ids 32099 ... 32000 on the T5 model.

_override_path: str | None = None
_existing_paths: set[str] = set()  # Paths already seen to exist: the deferred vocabulary resolves on every use.


def set_vocabulary_path(path: str | None) -> None:
  """Sets (or, with None, clears) the vocabulary path used when no explicit path is given."""
  global _override_path
  _override_path = os.fspath(path) if path is not None else None


def vocabulary_path_override() -> str | None:
  """Returns the path set by `set_vocabulary_path`, if any."""
  return _override_path


def resolve_vocabulary_path(path: str | os.PathLike | None = None) -> str:
  """Returns the SentencePiece model path to use, in the order given in the module docstring.

  Raises:
    VocabularyNotConfiguredError: no path was configured anywhere.
    FileNotFoundError: the configured path does not exist.
  """
  if path is not None:
    resolved, origin = os.fspath(path), "the explicit path (or gin binding get_vocabulary.path)"
  elif _override_path is not None:
    resolved, origin = _override_path, "set_vocabulary_path() / --vocab"
  elif os.environ.get(ENV_VARIABLE):
    resolved, origin = os.environ[ENV_VARIABLE], f"${ENV_VARIABLE}"
  else:
    raise VocabularyNotConfiguredError(
      "no SentencePiece vocabulary configured: for train, eval and infer set VOCABULARY_PATH "
      "(--gin.VOCABULARY_PATH=\"'/path/to/sentencepiece.model'\"); for `prompt-tuning tasks show` pass --vocab "
      f"/path/to/sentencepiece.model; or set the environment variable {ENV_VARIABLE}=/path/to/sentencepiece.model "
      "(T5 models use the 32,000-piece model, published as gs://t5-data/vocabs/cc_all.32000/sentencepiece.model)"
    )
  if resolved not in _existing_paths:
    if not tf.io.gfile.exists(resolved):
      raise FileNotFoundError(f"SentencePiece vocabulary {resolved!r} (from {origin}) does not exist; fix the path")
    _existing_paths.add(resolved)
  return resolved


@gin.configurable(module="prompt_tuning.data")
def get_vocabulary(path: str | None = None) -> seqio.SentencePieceVocabulary:
  """Returns the T5 SentencePiece vocabulary (with 100 sentinel ids) at the configured path.

  Args:
    path: the SentencePiece model file; when None, `set_vocabulary_path` or `$PROMPT_TUNING_VOCAB`.

  Raises:
    VocabularyNotConfiguredError: no path was configured anywhere.
    FileNotFoundError: the configured path does not exist.
  """
  return seqio.SentencePieceVocabulary(resolve_vocabulary_path(path), extra_ids=T5_EXTRA_IDS)


class DeferredVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose model path is looked up on first use rather than at construction."""

  def __init__(self):
    super().__init__(sentencepiece_model_file="", extra_ids=T5_EXTRA_IDS)

  def _current_path(self) -> str:
    return get_vocabulary().sentencepiece_model_file

  def _model_context(self):
    path = self._current_path()
    if path != self._sentencepiece_model_file:
      self._sentencepiece_model_file = path
      self._model = None  # seqio caches loaded models per path, so switching back is cheap.
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    return self._current_path()

  def __eq__(self, other) -> bool:
    if self is other or isinstance(other, DeferredVocabulary):
      return True  # Both resolve the same configured path.
    if not isinstance(other, seqio.SentencePieceVocabulary):
      return False
    return self._current_path() == other.sentencepiece_model_file and self.extra_ids == other.extra_ids

  __hash__ = None

  def __str__(self) -> str:
    path = self._sentencepiece_model_file or "<resolved on first use>"
    return f"DeferredVocabulary(file={path}, extra_ids={self.extra_ids})"


DEFERRED_VOCABULARY = DeferredVocabulary()


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """Returns the `inputs`/`targets` features of every task: T5 vocabulary, EOS appended."""
  vocabulary = vocabulary or DEFERRED_VOCABULARY
  return {
    "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def sentinel(index: int) -> str:
  """Returns the text of sentinel token `index` (`<extra_id_3>`), which the T5 vocabulary encodes as one id."""
  if not 0 <= index < T5_EXTRA_IDS:
    raise ValueError(f"sentinel index {index} is outside the {T5_EXTRA_IDS} T5 sentinels (0..{T5_EXTRA_IDS - 1})")
  return f"<extra_id_{index}>"
