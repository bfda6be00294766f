"""Where the vocabulary and the tfds data directory come from, and that neither is needed to register tasks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gin  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import prompt_tuning.data as data  # noqa: E402
from prompt_tuning.data import sources, vocab  # noqa: E402

VOCAB_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "t5_spm_32000.model"
needs_vocab = pytest.mark.skipif(not VOCAB_PATH.exists(), reason=f"reference vocabulary {VOCAB_PATH} is absent")


@pytest.fixture(autouse=True)
def no_configured_vocabulary(monkeypatch):
  """Each test starts with no vocabulary or data directory configured anywhere."""
  monkeypatch.delenv(vocab.ENV_VARIABLE, raising=False)
  vocab.set_vocabulary_path(None)
  gin.clear_config()
  yield
  vocab.set_vocabulary_path(None)
  data.set_tfds_data_dir(None)
  gin.clear_config()


def test_tasks_are_registered_without_a_vocabulary():
  task = seqio.get_mixture_or_task("glue_sst2_v200")
  assert task.output_features["inputs"].vocabulary is vocab.DEFERRED_VOCABULARY
  with pytest.raises(data.VocabularyNotConfiguredError, match="PROMPT_TUNING_VOCAB=/path/to/sentencepiece.model"):
    data.get_vocabulary()
  with pytest.raises(data.VocabularyNotConfiguredError, match="--vocab"):
    vocab.DEFERRED_VOCABULARY.encode("hello")


@needs_vocab
def test_resolution_order_explicit_then_override_then_environment(tmp_path, monkeypatch):
  other = tmp_path / "other.model"
  other.write_bytes(VOCAB_PATH.read_bytes())
  monkeypatch.setenv(vocab.ENV_VARIABLE, str(VOCAB_PATH))
  assert data.get_vocabulary().sentencepiece_model_file == str(VOCAB_PATH)
  data.set_vocabulary_path(str(other))
  assert data.get_vocabulary().sentencepiece_model_file == str(other)
  assert data.get_vocabulary(str(VOCAB_PATH)).sentencepiece_model_file == str(VOCAB_PATH)
  gin.bind_parameter("prompt_tuning.data.get_vocabulary.path", str(VOCAB_PATH))
  assert data.get_vocabulary().sentencepiece_model_file == str(VOCAB_PATH)


def test_missing_vocabulary_file_names_the_path_and_its_origin(tmp_path, monkeypatch):
  missing = tmp_path / "missing.model"
  monkeypatch.setenv(vocab.ENV_VARIABLE, str(missing))
  with pytest.raises(FileNotFoundError, match=rf"{missing}.*from \$PROMPT_TUNING_VOCAB"):
    data.get_vocabulary()


@needs_vocab
def test_deferred_vocabulary_follows_gin_and_equals_the_real_one():
  gin.bind_parameter("prompt_tuning.data.get_vocabulary.path", str(VOCAB_PATH))
  deferred = vocab.DEFERRED_VOCABULARY
  real = seqio.SentencePieceVocabulary(str(VOCAB_PATH), extra_ids=100)
  assert deferred == real and real == deferred
  assert deferred.vocab_size == 32100 and deferred.eos_id == 1 and deferred.pad_id == 0
  assert deferred.encode("<extra_id_0> hello") == real.encode("<extra_id_0> hello")
  assert deferred.encode("<extra_id_0>")[0] == 32099
  assert deferred.decode(real.encode("Hello world")) == "Hello world"
  assert deferred.encode_tf(tf.constant("Hello world")).numpy().tolist() == real.encode("Hello world")
  assert deferred != seqio.SentencePieceVocabulary(str(VOCAB_PATH), extra_ids=0)


def test_tfds_data_dir_from_setter_else_gin_else_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(tfds, "load", lambda name, **kwargs: calls.append((name, kwargs)) or tf.data.Dataset.range(1))
  source = seqio.get_mixture_or_task("glue_sst2_v200").source
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  source.get_dataset("validation", shuffle=False)
  assert calls[-1][0] == "glue/sst2:2.0.0" and calls[-1][1]["data_dir"] is None
  monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")  # Set after tfds was imported, as a CLI might.
  source.get_dataset("validation", shuffle=False)
  assert calls[-1][1]["data_dir"] == "/from/env"
  gin.bind_parameter("prompt_tuning.data.tfds_data_dir.path", "/from/gin")
  source.get_dataset("validation", shuffle=False)
  assert calls[-1][1]["data_dir"] == "/from/gin"
  data.set_tfds_data_dir("/from/flag")
  source.get_dataset("validation", shuffle=False)
  assert calls[-1][1]["data_dir"] == "/from/flag"
  assert sources.tfds_data_dir() == "/from/flag"


def test_unprepared_tfds_dataset_says_how_to_prepare_it(monkeypatch):
  def fail(name, **kwargs):
    raise AssertionError(f"Dataset {name} not found")

  monkeypatch.setattr(tfds, "load", fail)
  data.set_tfds_data_dir("/no/such/dir")
  source = seqio.get_mixture_or_task("super_glue_boolq_v102").source
  with pytest.raises(data.DataConfigError, match=r"tfds build super_glue/boolq:1.0.2.*--tfds_data_dir"):
    source.get_dataset("validation", shuffle=False)


def test_import_in_a_fresh_process_without_any_configuration():
  env = {k: v for k, v in os.environ.items() if k != vocab.ENV_VARIABLE}
  code = (
    "import prompt_tuning.data, prompt_tuning.data as again, seqio; "
    "assert again.get_class_labels('taskless_glue_sst2_v200_examples') == ['negative', 'positive']; "
    "print(len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names()))"
  )
  root = Path(__file__).resolve().parents[1]
  result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["192", "54"]
