"""Tasks from local JSONL/TSV files, the `tasks list|show` command, and the errors users see for bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import gin  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402

import prompt_tuning.data as data  # noqa: E402
from prompt_tuning.data import cli, tensorflow_setup  # noqa: E402

tensorflow_setup.limit_tensorflow_threads(2)

TESTDATA = Path(__file__).resolve().parent / "testdata" / "data"
VOCAB_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "t5_spm_32000.model"
needs_vocab = pytest.mark.skipif(not VOCAB_PATH.exists(), reason=f"reference vocabulary {VOCAB_PATH} is absent")

QA = {
  "train": str(TESTDATA / "tiny_qa_train.jsonl"),
  "validation": str(TESTDATA / "tiny_qa_validation.jsonl"),
  "input_template": "question: {question} passage: {passage}",
  "target_column": "answer",
}


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _write_jsonl(path: Path, rows: list[dict]) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_jsonl_task_with_template_and_labels():
  name = data.register_local_task("local_tiny_qa", class_labels=["no", "yes"], **QA)
  task = seqio.get_mixture_or_task(name)
  assert list(task.splits) == ["train", "validation"]
  assert task.num_input_examples("train") == 3
  examples = list(task.source.get_dataset("validation", shuffle=False).as_numpy_iterator())
  assert examples[0] == {
    "inputs": b"question: is fire hot passage: Fire gives off heat and light.",
    "targets": b"yes",
  }
  assert data.get_class_labels(name) == ["no", "yes"]
  assert [fn.__name__ for fn in task.metric_fns] == ["accuracy"]
  assert task.postprocess_fn("yes") == 1 and task.postprocess_fn("perhaps") == -1


def test_registering_the_same_local_task_again_is_a_no_op_and_a_change_replaces_it():
  name = data.register_local_task("local_again", **QA)
  task = seqio.get_mixture_or_task(name)
  assert data.register_local_task("local_again", **QA) == name
  assert seqio.get_mixture_or_task(name) is task
  data.register_local_task("local_again", class_labels=["no", "yes"], **QA)
  assert seqio.get_mixture_or_task(name) is not task
  assert data.get_class_labels(name) == ["no", "yes"]


def test_tsv_task_with_input_column_is_scored_by_exact_match():
  name = data.register_local_task(
    "local_tiny_sentiment",
    train=TESTDATA / "tiny_sentiment_train.tsv",
    validation=TESTDATA / "tiny_sentiment_validation.tsv",
    input_column="sentence",
    target_column="label",
  )
  task = seqio.get_mixture_or_task(name)
  examples = list(task.source.get_dataset("train", shuffle=False).as_numpy_iterator())
  assert examples == [
    {"inputs": b"the film is a delight", "targets": b"positive"},
    {"inputs": b"a dull , lifeless mess", "targets": b"negative"},
  ]
  assert data.get_class_labels(name) is None
  assert [fn.__name__ for fn in task.metric_fns] == ["sequence_exact_match"]


def test_unlabeled_test_file_may_omit_the_target(tmp_path):
  test = _write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "passage": "p"}])
  name = data.register_local_task("local_unlabeled", test=test, **{**QA, "train": QA["train"]})
  examples = list(seqio.get_mixture_or_task(name).source.get_dataset("test", shuffle=False).as_numpy_iterator())
  assert examples == [{"inputs": b"question: q passage: p", "targets": b""}]


@needs_vocab
def test_tasks_show_prints_text_and_token_ids(capsys):
  data.register_local_task("local_show_qa", class_labels=["no", "yes"], **QA)
  assert cli.main(["show", "local_show_qa", "--num", "2", "--vocab", str(VOCAB_PATH)]) == 0
  out = capsys.readouterr().out
  assert "class labels: no, yes" in out
  assert "inputs: question: is fire hot passage: Fire gives off heat and light." in out
  assert "inputs ids: [822, 10, 19, 1472, 1312, 5454, 10, 3655, 1527, 326, 1678, 11, 659, 5, 1]" in out
  assert "targets: yes" in out and "targets ids: [4273, 1]" in out
  assert "--- example 1 (validation)" in out and "--- example 2" not in out


@needs_vocab
def test_tasks_show_registers_a_local_task_from_gin(capsys, clean_gin):
  prefix = "prompt_tuning.data.register_local_task"
  bindings = [
    f"MIXTURE_OR_TASK_NAME = @{prefix}()",
    f"{prefix}.name = 'local_gin_sentiment'",
    f"{prefix}.train = '{TESTDATA / 'tiny_sentiment_train.tsv'}'",
    f"{prefix}.input_column = 'sentence'",
    f"{prefix}.target_column = 'label'",
    f"{prefix}.class_labels = ['negative', 'positive']",
    f"prompt_tuning.data.get_vocabulary.path = '{VOCAB_PATH}'",
  ]
  args = ["show", "--split", "train", "--num", "1"]
  assert cli.main(args + [a for b in bindings for a in ("--gin", b)]) == 0
  out = capsys.readouterr().out
  assert "task: local_gin_sentiment" in out and "inputs: the film is a delight" in out
  assert data.class_labels_for_task("local_gin_sentiment") == ["negative", "positive"]


def test_tasks_list_filters_by_substring_and_glob(capsys):
  assert cli.main(["list", "boolq"]) == 0
  names = capsys.readouterr().out.split()
  assert len(names) == 6 and "task_index_super_glue_boolq_v102_examples" in names
  assert cli.main(["list", "glue_v200_*"]) == 0
  assert capsys.readouterr().out.split() == ["glue_v200_proportional", "glue_v200_proportional_examples"]
  assert cli.main(["list", "no_such_thing"]) == 1
  assert "no task or mixture name matches 'no_such_thing'" in capsys.readouterr().err


def test_tasks_show_unknown_name_suggests_close_matches(capsys):
  assert cli.main(["show", "super_glue_bolq_v102"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "unknown task or mixture 'super_glue_bolq_v102'" in err
  assert "did you mean super_glue_boolq_v102" in err


def test_tasks_show_missing_split_and_missing_vocabulary(capsys, monkeypatch):
  monkeypatch.delenv("PROMPT_TUNING_VOCAB", raising=False)
  data.register_local_task("local_show_errors", **QA)
  assert cli.main(["show", "local_show_errors", "--split", "test"]) == 2
  assert "has no split 'test'; its splits are train, validation" in capsys.readouterr().err
  assert cli.main(["show", "local_show_errors"]) == 2
  assert "no SentencePiece vocabulary configured" in capsys.readouterr().err


def test_missing_file(tmp_path):
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(data.LocalDataError, match=f"the validation file '{missing}' does not exist"):
    data.register_local_task("local_missing", **{**QA, "validation": str(missing)})


def test_missing_column(tmp_path):
  rows = [{"question": "q", "passage": "p", "answer": "yes"}, {"question": "q2", "answer": "no"}]
  path = _write_jsonl(tmp_path / "train.jsonl", rows)
  with pytest.raises(data.LocalDataError, match=r"train.jsonl, line 2: no column 'passage'"):
    data.register_local_task("local_missing_column", **{**QA, "train": path, "validation": None})
  tsv = tmp_path / "train.tsv"
  tsv.write_text("text\tlabel\nhello\tyes\n")
  with pytest.raises(data.LocalDataError, match="no column 'sentence'"):
    data.register_local_task("local_missing_tsv_column", train=str(tsv), input_column="sentence", target_column="label")


def test_target_not_among_the_declared_labels(tmp_path):
  rows = [{"question": "q", "passage": "p", "answer": "yes"}, {"question": "q", "passage": "p", "answer": "Maybe"}]
  path = _write_jsonl(tmp_path / "train.jsonl", rows)
  with pytest.raises(data.LocalDataError, match=r"line 2: target 'Maybe' is not one of the declared class_labels"):
    data.register_local_task("local_bad_label", class_labels=["no", "yes"], **{**QA, "train": path})


def test_other_configuration_errors(tmp_path):
  with pytest.raises(data.LocalDataError, match="exactly one of input_column"):
    data.register_local_task("local_no_input", train=QA["train"], target_column="answer")
  with pytest.raises(data.LocalDataError, match="no files"):
    data.register_local_task("local_no_files", input_column="question")
  with pytest.raises(data.LocalDataError, match="already used by a built-in"):
    data.register_local_task("glue_sst2_v200", **QA)
  with pytest.raises(data.LocalDataError, match="must be letters, digits"):
    data.register_local_task("my task", **QA)
  odd = tmp_path / "train.csv"
  odd.write_text("a,b\n")
  with pytest.raises(data.LocalDataError, match="set file_format='jsonl' or 'tsv'"):
    data.register_local_task("local_csv", train=str(odd), input_column="a", target_column="b")
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"question": "q"}\nnot json\n')
  with pytest.raises(data.LocalDataError, match="bad.jsonl, line 2: not valid JSON"):
    data.register_local_task("local_bad_json", train=str(bad_json), input_column="question", target_column="question")
  ragged = tmp_path / "ragged.tsv"
  ragged.write_text("sentence\tlabel\none\ttwo\tthree\n")
  with pytest.raises(data.LocalDataError, match="line 2: 3 tab-separated fields, but the header has 2"):
    data.register_local_task("local_ragged", train=str(ragged), input_column="sentence", target_column="label")


def test_tasks_show_mixture_lists_its_tasks_and_rates(capsys):
  assert cli.main(["show", "super_glue_v102_proportional"]) == 0
  out = capsys.readouterr().out
  assert "mixture: super_glue_v102_proportional" in out
  assert "super_glue_boolq_v102: 9427" in out and "super_glue_axb_v102" not in out
